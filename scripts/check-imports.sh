#!/usr/bin/env bash
# The package rules of docs/architecture.md: who may import whom. Fails
# naming the package and the import that breaks a rule.
set -uo pipefail
cd "$(dirname "$0")/.."
M=github.com/merlin-ipvs/merlin
status=0

# forbid PKG 'what it is' REGEX: no direct import of PKG matches REGEX.
forbid() {
  local pkg=$1 why=$2 re=$3 bad
  bad=$(go list -f '{{join .Imports "\n"}}' "$M/$pkg" | grep -E "$re")
  if [ -n "$bad" ]; then
    echo "$pkg ($why) imports:"; echo "$bad" | sed 's/^/  /'; status=1
  fi
}
# forbid_deps PKG 'why' REGEX: nothing PKG links matches REGEX.
forbid_deps() {
  local pkg=$1 why=$2 re=$3 bad
  bad=$(go list -deps "$M/$pkg" | grep -E "$re")
  if [ -n "$bad" ]; then
    echo "$pkg ($why) links:"; echo "$bad" | sed 's/^/  /'; status=1
  fi
}

forbid control/store "the desired state: no gRPC server, datapath, health, BGP or Prometheus" \
  "^google.golang.org/grpc|^$M/(datapath|health|bgp|control/api|control/node)|prometheus"
forbid_deps control/api "the API never reaches the node" "^$M/(control/node|datapath|health|bgp)(/|$)"
forbid_deps control/node "the node never reaches the API" "^$M/control/api$"
for p in model datapath/ipvs datapath/netif datapath/xdpstats health bgp; do
  forbid_deps "$p" "below the control plane" "^$M/control|^go.etcd.io"
done
forbid_deps cmd/meradm "a laptop tool" "^go.etcd.io|prometheus|netlink|^$M/control"
[ $status = 0 ] && echo "package imports follow the rules"
exit $status

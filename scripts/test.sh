#!/usr/bin/env bash
# The whole test suite: set-up, lint, host tests (unit and privileged),
# short fuzz runs, and the VM tier on Debian's kernel; then one summary.
# Every tier runs even if an earlier one failed; the summary decides.
set -uo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:$(go env GOPATH)/bin"
export MERLIN_CACHE=${MERLIN_CACHE:-/var/cache/merlin}
# An execution count, not a duration: Go 1.26's fuzz coordinator can fail a
# duration-bound run with a spurious "context deadline exceeded" at the end
# of its time (golang/go#75804, fixed in Go 1.27).
FUZZTIME=${FUZZTIME:-50000x}
out=build/test
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.log

./scripts/setup.sh || { echo "setup failed"; exit 1; }

# Privileged host tests are promised where we run as root (CI does); the
# peer programs (Debian's etcd, ...) are promised because setup installed them.
if [ "$(id -u)" = 0 ]; then export MERLIN_PRIVILEGED=1; fi
export MERLIN_PEERS=1

status=0
step() { printf '\n==== %s ====\n' "$*"; }

step "lint"
unformatted=$(gofmt -l $(git ls-files '*.go') 2>/dev/null)
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; status=1; fi
go vet ./... || status=1
staticcheck ./... || status=1

step "tracked files"
./scripts/check-tracked.sh || status=1

step "generated code is reproducible"
if ./scripts/generate.sh && git diff --quiet -- types control/api/testdata datapath/xdpstats; then
  echo "make generate: no diff"
else
  echo "make generate changed committed files:"; git diff --stat -- types control/api/testdata datapath/xdpstats; status=1
fi

step "package imports"
./scripts/check-imports.sh || status=1

step "build"
# meradm is a laptop tool: it builds for other systems (what it may link
# is checked with the package imports above).
for os in darwin windows; do GOOS=$os go build -o /dev/null ./cmd/meradm || { echo "meradm does not build for $os"; status=1; }; done
# Linux-only code sits in _linux.go files: the planner, ipvs.Diff, the
# codec and the batch accounting build (and test) anywhere.
GOOS=darwin go build ./model/... ./control/... ./datapath/... ./health/... ./bgp/... || { echo "the portable packages do not build for darwin"; status=1; }
go build ./... || status=1
go build -o bin/vmrun ./vmtests/cmd/vmrun || status=1
# The VM cluster tests run these binaries inside the VM.
go build -o bin/merlin ./cmd/merlin || status=1
go build -o bin/meradm ./cmd/meradm || status=1
# The packages the systemd VM tests install (vmtests/systemd).
./scripts/vmdebs.sh || status=1

step "host tests (unit and privileged)"
go test -json -count=1 -timeout 15m ./... > "$out/host.json"
go run ./internal/cmd/testsummary host="$out/host.json" | tail -3

step "failover (short form of make bench's)"
# Two link cuts per router with BFD 300 ms × 3; figures only (make bench
# runs 20 per configuration and records them in bench/README.md).
if [ "$(id -u)" = 0 ]; then
  go build -o bin/failoverbench ./bench/failoverbench && bin/failoverbench -trials 2 -configs bfd300ms || { echo "failover bench failed"; status=1; }
else
  echo "skipped: needs root (network namespaces)"
fi

step "flatness (short form of make bench's)"
# What one change costs each part of the node's per-change path at 100 and
# 1,000 services; verdicts printed, not asserted (make bench runs 100 and
# 10,000 and fails when a part grows).
go run ./bench/flatbench -small 100 -large 1000 -changes 50 -report-only || { echo "flat bench failed"; status=1; }

step "fuzz (${FUZZTIME} per target)"
: > "$out/fuzz.json"
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    budget=$FUZZTIME
    # Each FuzzAPI input is RPCs through a real etcd: fewer of them.
    [ "$target" = FuzzAPI ] && budget=${FUZZTIME_API:-20000x}
    # Each FuzzHostileRouter input is a BGP session over TCP.
    [ "$target" = FuzzHostileRouter ] && budget=${FUZZTIME_BGP:-5000x}
    echo "fuzz $pkg $target ($budget)"
    go test -json -run '^$' -fuzz "^${target}\$" -fuzztime "$budget" "$pkg" >> "$out/fuzz.json"
  done
done

step "VM tests (Debian kernel under qemu)"
kdir=$(readlink -f "$MERLIN_CACHE/kernel/current")
kernel="VM kernel: $(basename "$kdir") $(cat "$kdir/deb-version")"
echo "$kernel"
# Packages with tests that need the VM kernel: TestKernel* and TestVM*.
vmpkgs=$(grep -rlE --include='*_test.go' '^func Test(Kernel|VM)' . | xargs -r -n1 dirname | sort -u)
# The timeout guards against a hang: on 2026-12-07 a slow VM took
# vmtests/cluster past 20 minutes with every test till then passing.
go test -json -count=1 -timeout 35m -exec "$PWD/bin/vmrun" -run '^Test(Kernel|VM)' $vmpkgs > "$out/vm.json"

go run ./internal/cmd/testsummary -require vm -require host -header "$kernel" \
  host="$out/host.json" fuzz="$out/fuzz.json" vm="$out/vm.json" || status=1
exit $status

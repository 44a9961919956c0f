#!/usr/bin/env bash
# Installs what merlin's tests and demo need on a Debian 12 machine, idempotently:
# Debian packages, Debian's own kernel package (downloaded and unpacked, not
# installed; cached under $MERLIN_CACHE), and Go tools. Safe to run every time.
set -euo pipefail

CACHE=${MERLIN_CACHE:-/var/cache/merlin}
PACKAGES=(qemu-system-x86 qemu-system-data busybox-static kmod cpio ipvsadm xz-utils iproute2 binutils etcd-server etcd-client protobuf-compiler libprotobuf-dev keepalived bird2 gobgpd frr clang-19 llvm-19 libbpf-dev linux-libc-dev bpftool xdp-tools prometheus prometheus-node-exporter systemd lintian dpkg-dev)
STATICCHECK_VERSION=${STATICCHECK_VERSION:-v0.7.0}

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_update_once
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel: whatever linux-image-amd64 points to. Resolve it from the apt
# lists; refresh them once if they do not know the package yet.
resolve_kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
kpkg=$(resolve_kernel_pkg || true)
if [ -z "$kpkg" ]; then
  apt_update_once
  kpkg=$(resolve_kernel_pkg)
fi
[ -n "$kpkg" ] || { log "cannot resolve linux-image-amd64"; exit 1; }
kver=${kpkg#linux-image-}
kdir="$CACHE/kernel/$kpkg"

if [ ! -f "$kdir/.complete" ]; then
  log "fetching $kpkg"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq "$kpkg" 2>/dev/null)
  deb=$(ls "$tmp"/*.deb)
  rm -rf "$kdir" && mkdir -p "$kdir"
  dpkg-deb -x "$deb" "$kdir/root"
  dpkg-deb -f "$deb" Version > "$kdir/deb-version"
  echo "$kver" > "$kdir/kernel-release"
  # The .deb ships no modules.dep.
  depmod -b "$kdir/root" "$kver"
  # Boot the uncompressed ELF: decompressing the XZ bzImage under TCG costs ~3.5 s.
  vmlinuz="$kdir/root/boot/vmlinuz-$kver"
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)
  # xz stops at the end of its stream, so tail may die of SIGPIPE: check the result instead.
  { tail -c +"$((off + 1))" "$vmlinuz" | xz -dc --single-stream > "$kdir/vmlinux"; } || true
  [ "$(head -c 4 "$kdir/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || { log "vmlinux extraction failed"; exit 1; }
  touch "$kdir/.complete"
  rm -rf "$tmp"; trap - EXIT
fi
ln -sfn "$kpkg" "$CACHE/kernel/current"

if ! command -v staticcheck >/dev/null 2>&1 && [ ! -x "$(go env GOPATH)/bin/staticcheck" ]; then
  log "installing staticcheck $STATICCHECK_VERSION"
  go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
fi

log "kernel $kpkg $(cat "$kdir/deb-version") ready in $kdir"

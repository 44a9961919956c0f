#!/usr/bin/env bash
# Installs what merlin's tests and demo need on a Debian 12 machine, idempotently:
# Debian packages, Debian's own kernel package (downloaded and unpacked, not
# installed; cached under $MERLIN_CACHE), and Go tools. Safe to run every time.
set -euo pipefail

CACHE=${MERLIN_CACHE:-/var/cache/merlin}
PACKAGES=(qemu-system-x86 qemu-system-data busybox-static kmod cpio ipvsadm xz-utils iproute2 binutils etcd-server etcd-client protobuf-compiler libprotobuf-dev keepalived bird2 gobgpd frr clang-19 llvm-19 libbpf-dev linux-libc-dev bpftool xdp-tools prometheus prometheus-node-exporter systemd lintian dpkg-dev mmdebstrap)
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

# The systemd VM tier's root filesystem (vmtests/systemd): Debian minbase with
# systemd, the lab's peers and what the deploying guide runs, built by mmdebstrap from the same archive, so
# the guest boots like an installed machine (not the host's root, which may
# be a container image's). Cached under a key of what goes in and the
# archive's versions of it; SOURCE_DATE_EPOCH makes the build reproducible.
ROOTFS_PACKAGES=systemd,systemd-sysv,init-system-helpers,iproute2,bird2,ipvsadm,bpftool,kmod,procps,util-linux,etcd-server,etcd-client,openssl,curl
# What an installer leaves and minbase does not: /etc/hosts (meradm's
# default host is localhost), a hostname; no resolver (the guest has no
# network).
ROOTFS_HOOKS=(--customize-hook='printf "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" > "$1/etc/hosts"'
  --customize-hook='echo vm > "$1/etc/hostname"' --customize-hook='rm -f "$1/etc/resolv.conf"')
rootfs_key=$( (echo "$ROOTFS_PACKAGES ${ROOTFS_HOOKS[*]}"; apt-cache policy ${ROOTFS_PACKAGES//,/ } libc6 2>/dev/null | grep -e '^[a-z]' -e Candidate) | sha256sum | cut -c1-16)
rdir="$CACHE/rootfs/$rootfs_key"
if [ ! -f "$rdir/.complete" ]; then
  log "building the systemd VM tier's root filesystem ($rootfs_key)"
  as_root rm -rf "$rdir" && as_root mkdir -p "$rdir"
  as_root env SOURCE_DATE_EPOCH=1700000000 mmdebstrap --quiet --mode=root --variant=minbase \
    --include="$ROOTFS_PACKAGES" "${ROOTFS_HOOKS[@]}" bookworm "$rdir/root" http://deb.debian.org/debian
  as_root touch "$rdir/.complete"
fi
ln -sfn "$rootfs_key" "$CACHE/rootfs/current"
# Earlier builds (another archive state) go: 220 MB each.
find "$CACHE/rootfs" -mindepth 1 -maxdepth 1 -type d ! -name "$rootfs_key" -exec rm -rf {} +

if ! command -v staticcheck >/dev/null 2>&1 && [ ! -x "$(go env GOPATH)/bin/staticcheck" ]; then
  log "installing staticcheck $STATICCHECK_VERSION"
  go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
fi

log "kernel $kpkg $(cat "$kdir/deb-version") ready in $kdir; root filesystem in $rdir"

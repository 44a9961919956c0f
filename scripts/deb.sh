#!/usr/bin/env bash
# Builds the Debian package (make deb; LDFLAGS as the Makefile stamps them):
# build/merlin_VERSION_amd64.deb. Reproducible: every file's time is the
# commit's (SOURCE_DATE_EPOCH), owners root, compressed the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: deb.sh VERSION}
# Debian versions start with a digit and keep '-' for the Debian revision:
# v1.2.3 -> 1.2.3-1; v0.0.0-20261207021227-7f360639cd73 -> 0.0.0~git20261207021227.7f360639cd73-1
debver=${version#v}
if [[ $debver =~ ^([0-9.]+)-([0-9]{14})-([0-9a-f]+)$ ]]; then
  debver="${BASH_REMATCH[1]}~git${BASH_REMATCH[2]}.${BASH_REMATCH[3]:0:12}"
fi
debver="${debver//-/.}-1"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

# MERLIN_DEB_OUT: where the package goes (default build); MERLIN_DEB_COMPRESSION:
# xz (default), gzip or none (the VM tests unpack faster).
out_dir=${MERLIN_DEB_OUT:-build}
compression=${MERLIN_DEB_COMPRESSION:-xz}
root="$out_dir/deb/root"
rm -rf "$out_dir/deb" && mkdir -p "$root/DEBIAN"
# Position-independent and stripped (Debian's hardening); the version
# stamp as make build's.
ldflags=${LDFLAGS:?the Makefile passes LDFLAGS}
for cmd in merlin:usr/sbin meradm:usr/bin; do
  mkdir -p "$root/${cmd#*:}"
  CGO_ENABLED=0 go build -trimpath -buildmode=pie -ldflags "$ldflags -s -w" -o "$root/${cmd#*:}/${cmd%%:*}" "./cmd/${cmd%%:*}"
done
sed 's|/usr/local/bin/merlin|/usr/sbin/merlin|' deploy/merlin.service | install -D -m 0644 /dev/stdin "$root/lib/systemd/system/merlin.service"
"$root/usr/sbin/merlin" -print-config-template | install -D -m 0644 /dev/stdin "$root/etc/merlin/merlin.yaml"
printf '# IPVS, for merlin (installed by the merlin package)\nip_vs\n' | install -D -m 0644 /dev/stdin "$root/usr/lib/modules-load.d/merlin.conf"
"$root/usr/bin/meradm" completion bash | install -D -m 0644 /dev/stdin "$root/usr/share/bash-completion/completions/meradm"
"$root/usr/bin/meradm" completion zsh | install -D -m 0644 /dev/stdin "$root/usr/share/zsh/vendor-completions/_meradm"
"$root/usr/bin/meradm" completion fish | install -D -m 0644 /dev/stdin "$root/usr/share/fish/vendor_completions.d/meradm.fish"
mkdir -p "$root/usr/share/man/man1" "$root/usr/share/man/man8"
"$root/usr/bin/meradm" man "$root/usr/share/man/man1"
"$root/usr/sbin/merlin" -print-man > "$root/usr/share/man/man8/merlin.8"
gzip -9n "$root"/usr/share/man/man*/*
install -D -m 0644 deploy/grafana/merlin.json "$root/usr/share/merlin/grafana/merlin.json"
install -D -m 0644 deploy/prometheus/merlin-rules.yml "$root/usr/share/merlin/prometheus/merlin-rules.yml"
install -D -m 0644 deploy/prometheus/prometheus.yml "$root/usr/share/merlin/prometheus/prometheus.yml.example"
doc="$root/usr/share/doc/merlin"
install -D -m 0644 docs/deploying.md "$doc/deploying.md"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 deploy/merlin.yaml "$doc/merlin.yaml.example"
install -D -m 0644 deploy/debian/copyright "$doc/copyright"
printf 'merlin (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- merlin maintainers <merlin@example.org>  %s\n' \
  "$debver" "$version" "$(date -u -d "@$SOURCE_DATE_EPOCH" -R)" | gzip -9n > "$doc/changelog.Debian.gz"
install -D -m 0644 deploy/debian/lintian-overrides "$root/usr/share/lintian/overrides/merlin"

for s in postinst prerm postrm; do install -m 0755 "deploy/debian/$s" "$root/DEBIAN/$s"; done
echo /etc/merlin/merlin.yaml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$debver/" -e "s/@SIZE@/$size/" deploy/debian/control.in > "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum > DEBIAN/md5sums)
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
chmod -R go-w "$root"
out="$out_dir/merlin_${debver}_amd64.deb"
dpkg-deb --root-owner-group "-Z$compression" --build "$root" "$out" >/dev/null
echo "$out"

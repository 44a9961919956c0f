#!/usr/bin/env bash
# Fails if a tracked file looks built: an ELF that is not an eBPF object
# (e_machine 247), or anything over 1 MiB outside testdata/.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue
  case "$f" in testdata/*|*/testdata/*) continue ;; esac
  size=$(stat -c %s "$f")
  if [ "$size" -gt 1048576 ]; then echo "tracked file over 1 MiB: $f ($size bytes)"; bad=1; continue; fi
  if [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] &&
     [ "$(od -An -tu2 -j18 -N2 "$f" | tr -d ' \n')" != 247 ]; then
    echo "tracked ELF file that is not an eBPF object: $f"; bad=1
  fi
done < <(git ls-files -z)
[ "$bad" = 0 ] && echo "tracked files: no binaries, nothing over 1 MiB outside testdata/"
exit "$bad"

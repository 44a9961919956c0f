#!/usr/bin/env bash
# The packages the systemd VM tests install (vmtests/systemd): v1.2.3 and,
# for the upgrade test, v1.2.4 of the same tree. Uncompressed: a guest
# under emulation unpacks them much faster.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse HEAD 2>/dev/null || true)
for v in v1.2.3 v1.2.4; do
  MERLIN_DEB_COMPRESSION=none \
    LDFLAGS="-X github.com/merlin-ipvs/merlin/internal/version.stamped=$v -X github.com/merlin-ipvs/merlin/internal/version.stampedCommit=$commit" \
    ./scripts/deb.sh "$v" >/dev/null
done

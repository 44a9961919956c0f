#!/usr/bin/env bash
# Regenerates committed code (protobuf and gRPC stubs) with pinned tools so
# that `make generate` followed by `git diff` is clean.
set -euo pipefail
cd "$(dirname "$0")/.."
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
bin="$PWD/build/tools"
mkdir -p "$bin"
GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
PATH="$bin:$PATH" protoc -I types -I /usr/include \
  --go_out=types --go_opt=paths=source_relative \
  --go-grpc_out=types --go-grpc_opt=paths=source_relative \
  types/types.proto
# The original Merlin API's shapes, as a descriptor set for the compatibility test.
protoc -I control/api/testdata -I /usr/include --include_imports \
  -o control/api/testdata/original_merlin.pb control/api/testdata/original_merlin.proto
# The eBPF counters (bpf/*.c) with Debian's clang 19, through bpf2go.
go generate ./datapath/xdpstats
# The Grafana dashboard, from typed code (deploy/grafana/dashboard).
go run ./deploy/grafana/gen > deploy/grafana/merlin.json.new
mv deploy/grafana/merlin.json.new deploy/grafana/merlin.json

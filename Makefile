# merlin: see README.md. `make test` and `make demo` set up what they need.
SHELL := /bin/bash
GO ?= go
export MERLIN_CACHE ?= /var/cache/merlin

.PHONY: all build setup generate demo test vmtest soak lint bench clean deb

all: build

# The version the binaries carry (`merlin --version`, node status): the
# release tag, or a Go pseudo-version of the commit between releases.
VERSION ?= $(shell git describe --tags --match 'v[0-9]*' 2>/dev/null || \
	TZ=UTC git log -1 --date=format-local:%Y%m%d%H%M%S --format='v0.0.0-%cd-%H' 2>/dev/null | cut -c1-34)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo +dirty)
LDFLAGS := -X github.com/merlin-ipvs/merlin/internal/version.stamped=$(VERSION) \
	-X github.com/merlin-ipvs/merlin/internal/version.stampedCommit=$(COMMIT)

build:
	$(GO) build ./...
	$(GO) build -o bin/vmrun ./vmtests/cmd/vmrun
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/merlin ./cmd/merlin
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/meradm ./cmd/meradm

setup:
	./scripts/setup.sh

# The Debian package: build/merlin_VERSION_amd64.deb (deploy/debian).
deb: build
	LDFLAGS='$(LDFLAGS)' ./scripts/deb.sh '$(VERSION)'

# Committed generated code (protobuf, gRPC); `git diff` is clean afterwards.
generate: setup
	./scripts/generate.sh

# The main job: etcd, two merlin nodes, backends and a client on a real
# kernel in the VM; services made with meradm; real connections through them.
demo: setup build
	$(GO) build -o bin/demo ./vmtests/cmd/demo
	MERLIN_VM_MEMORY=3072 $(CURDIR)/bin/vmrun $(CURDIR)/bin/demo

# The whole suite: set-up, lint, host tests, fuzz, VM tests, one summary.
test:
	./scripts/test.sh

# Only the VM tier.
vmtest: setup build
	./scripts/vmdebs.sh
	grep -rlE --include='*_test.go' '^func Test(Kernel|VM)' . | xargs -r -n1 dirname | sort -u | \
	  xargs $(GO) test -count=1 -timeout 35m -exec $(CURDIR)/bin/vmrun -run '^Test(Kernel|VM)' -v

# The chaos soak alone, long: make soak DURATION=30m SEED=42 (make test runs
# it for 2 minutes with a fresh seed; a failure prints its seed).
soak: setup build
	MERLIN_SOAK_DURATION=$(or $(DURATION),10m) MERLIN_SOAK_SEED=$(SEED) $(GO) test -count=1 -timeout 0 \
	  -exec $(CURDIR)/bin/vmrun -run '^TestVMSoak$$' -v ./vmtests/soak

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" staticcheck ./...

# Side-by-side benchmarks, each in one VM run: the datapath against ipvsadm,
# cloudflare/ipvs and moby/ipvs; the node agent against a bare etcd watcher
# with ipvsadm -e; health checks against keepalived; the eBPF counters against
# xdp-filter (on the host: no IPVS needed); /metrics with 10,000 services;
# failover of a dead node with and without BFD against bird2 and FRR (host);
# IPVS connection sync: lag, and connections per second with sync on and off;
# what one change costs each part of the node's path at 100 and 10,000
# services (host; fails when a part grows with the table).
bench: setup build
	$(GO) build -o bin/ipvsbench ./bench/ipvsbench
	$(GO) build -o bin/agentbench ./bench/agentbench
	$(GO) build -o bin/healthbench ./bench/healthbench
	$(GO) build -o bin/bgpbench ./bench/bgpbench
	$(GO) build -o bin/xdpbench ./bench/xdpbench
	$(GO) build -o bin/scrapebench ./bench/scrapebench
	$(GO) build -o bin/failoverbench ./bench/failoverbench
	$(GO) build -o bin/syncbench ./bench/syncbench
	MERLIN_VM_MEMORY=4096 $(CURDIR)/bin/vmrun $(CURDIR)/bin/ipvsbench -services 10000 -dests 10 -runs 3
	MERLIN_VM_MEMORY=4096 $(CURDIR)/bin/vmrun $(CURDIR)/bin/agentbench -small 100 -large 10000 -dests 10 -changes 200
	$(CURDIR)/bin/vmrun $(CURDIR)/bin/healthbench -servers 200 -kill 100 -measure 15s -rounds 3
	MERLIN_VM_MEMORY=3072 $(CURDIR)/bin/vmrun $(CURDIR)/bin/bgpbench -large 10000 -small 10 -reps 100 -rounds 3
	$(CURDIR)/bin/xdpbench -rounds 5
	MERLIN_VM_MEMORY=4096 $(CURDIR)/bin/vmrun $(CURDIR)/bin/scrapebench -services 10000 -dests 10 -scrapes 5
	$(CURDIR)/bin/failoverbench -trials 20
	$(CURDIR)/bin/vmrun $(CURDIR)/bin/syncbench -connections 500 -runs 5 -cps-time 5s
	$(GO) run ./bench/flatbench -small 100 -large 10000 -changes 400

clean:
	rm -rf bin build

# merlin: see README.md. `make test` and `make demo` set up what they need.
SHELL := /bin/bash
GO ?= go
export MERLIN_CACHE ?= /var/cache/merlin

.PHONY: all build setup test vmtest lint fuzz bench generate clean

all: build

build:
	$(GO) build ./...
	$(GO) build -o bin/vmrun ./vmtests/cmd/vmrun

setup:
	./scripts/setup.sh

# The whole suite: set-up, lint, host tests, fuzz, VM tests, one summary.
test:
	./scripts/test.sh

# Only the VM tier.
vmtest: setup build
	grep -rlE --include='*_test.go' '^func Test(Kernel|VM)' . | xargs -r -n1 dirname | sort -u | \
	  xargs $(GO) test -count=1 -timeout 20m -exec $(CURDIR)/bin/vmrun -run '^Test(Kernel|VM)' -v

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" staticcheck ./...

# Side-by-side benchmarks against ipvsadm, cloudflare/ipvs and moby/ipvs, in one VM.
bench: setup build
	$(GO) test -c -o bin/ipvsbench.test ./bench/ipvsbench
	cd bench/ipvsbench && MERLIN_VM_MEMORY=4096 $(CURDIR)/bin/vmrun $(CURDIR)/bin/ipvsbench.test -test.run '^TestVMBenchmark$$' -test.v -test.timeout 60m

clean:
	rm -rf bin build

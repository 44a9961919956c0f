package xdpstats

// The programs in bpf/counters.c, compiled by Debian's clang 19 for
// little-endian targets (amd64, arm64). scripts/generate.sh runs this.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -type key4 -type key6 -type mac_key -type addr6 -type counters -type vip_counters counters ../../bpf/counters.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror

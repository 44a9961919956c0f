// Command failoverbench measures how long a dead node keeps attracting
// traffic: two nodes announce one VIP to a router (bird2, then FRR), a
// client in the router's namespace connects to the VIP every 10 ms, and
// one node's link is cut (the router's interface stays up: a bridge port
// goes dark, as a dead NIC or a hung host looks to a router). Per
// configuration — BGP hold time 3 s without BFD, BFD 300 ms × 3, BFD
// 100 ms × 3 — it prints p50/p99 over the trials of:
//
//   - route: from the cut until the router's kernel route has lost the
//     node's next hop;
//   - gap: from the cut until the start of the last connection attempt that
//     failed (what clients saw);
//
// and the ratio of each BFD configuration to the hold time. The nodes are
// merlin's BGP speaker (with its BFD) in processes of their own, each in a
// network namespace; the routers are Debian's bird2 and FRR (zebra, bgpd,
// bfdd). Needs root; runs on the host (no IPVS involved).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

var (
	trials     = flag.Int("trials", 20, "cuts per router and configuration")
	routerList = flag.String("routers", "bird,frr", "routers to run against, comma-separated")
	configList = flag.String("configs", "hold3s,bfd300ms,bfd100ms", "configurations, comma-separated")
	speaker    = flag.Bool("speaker", false, "internal: run as one node's speaker (in its namespace)")
)

func main() {
	flag.Parse()
	if *speaker {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := runSpeaker(ctx, flag.Args()); err != nil {
			fmt.Fprintln(os.Stderr, "speaker:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "failoverbench:", err)
		os.Exit(1)
	}
}

// config is one way a node's death is detected.
type config struct {
	name string
	hold time.Duration
	bfd  time.Duration // 0: no BFD
}

var configs = map[string]config{
	"hold3s":   {name: "hold time 3s, no BFD", hold: 3 * time.Second},
	"bfd300ms": {name: "BFD 300ms × 3 (hold 9s)", hold: 9 * time.Second, bfd: 300 * time.Millisecond},
	"bfd100ms": {name: "BFD 100ms × 3 (hold 9s)", hold: 9 * time.Second, bfd: 100 * time.Millisecond},
}

type result struct {
	route, gap []time.Duration
	failed     int // connection attempts that failed, all trials
}

func run() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	fmt.Printf("failover: %d trials per router and configuration; a node's link cut, a client connecting every 10 ms\n\n", *trials)
	for _, router := range strings.Split(*routerList, ",") {
		results := map[string]result{}
		var order []string
		for _, name := range strings.Split(*configList, ",") {
			cfg, ok := configs[name]
			if !ok {
				return fmt.Errorf("-configs: no configuration %q", name)
			}
			res, err := measure(router, cfg)
			if err != nil {
				return fmt.Errorf("%s, %s: %w", router, cfg.name, err)
			}
			results[name], order = res, append(order, name)
		}
		report(router, order, results)
	}
	return nil
}

func report(router string, order []string, results map[string]result) {
	fmt.Printf("%s\n", routerName(router))
	fmt.Printf("  %-26s %10s %10s %10s %10s %8s\n", "configuration", "route p50", "route p99", "gap p50", "gap p99", "failed")
	for _, name := range order {
		r := results[name]
		fmt.Printf("  %-26s %10s %10s %10s %10s %8d\n", configs[name].name, pct(r.route, 50), pct(r.route, 99), pct(r.gap, 50), pct(r.gap, 99), r.failed)
	}
	if base, ok := results["hold3s"]; ok {
		for _, name := range order {
			if name == "hold3s" {
				continue
			}
			goal := ""
			if name == "bfd300ms" {
				goal = fmt.Sprintf(" (goal: p99 ≤ 1.0s; %s)", map[bool]string{true: "met", false: "missed"}[pct(results[name].gap, 99) <= time.Second])
			}
			fmt.Printf("  %s / hold time 3s: gap p99 %.3f%s\n", name,
				float64(pct(results[name].gap, 99))/float64(max(pct(base.gap, 99), 1)), goal)
		}
	}
	fmt.Println()
}

// pct is the p-th percentile (nearest rank), rounded to milliseconds.
func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)].Round(time.Millisecond)
}

func routerName(r string) string {
	switch r {
	case "bird":
		out, _ := exec.Command("bird", "--version").CombinedOutput()
		return strings.TrimSpace(string(out))
	case "frr":
		out, _ := exec.Command("/usr/lib/frr/bgpd", "--version").CombinedOutput()
		first, _, _ := strings.Cut(string(out), "\n")
		return "FRR " + strings.TrimSpace(first)
	}
	return r
}

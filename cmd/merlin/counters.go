package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"

	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
)

// counterFlags are the -counters-* settings; counters are off unless an
// interface is given.
type counterFlags struct {
	xdp, tc, mode, pinDir string
	maxVIPs, maxServers   int
	remove                bool
}

func (c *counterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.xdp, "counters-xdp-interfaces", "", "comma-separated interfaces where client traffic arrives: count per VIP with XDP (eBPF counters are off without any interface)")
	fs.StringVar(&c.mode, "counters-xdp-mode", "", "XDP mode: native, generic, or empty for native where the driver has it")
	fs.StringVar(&c.tc, "counters-tc-interfaces", "", "comma-separated interfaces IPVS sends to real servers on: count per real server with TC")
	fs.IntVar(&c.maxVIPs, "counters-max-vips", xdpstats.DefaultMaxVIPs, "VIP:port:protocol keys the XDP maps hold")
	fs.IntVar(&c.maxServers, "counters-max-servers", xdpstats.DefaultMaxServers, "real-server keys the TC maps hold")
	fs.StringVar(&c.pinDir, "counters-pin-dir", xdpstats.DefaultPinDir, "bpffs directory of the pinned maps and links (a restarted merlin keeps counting from them)")
	fs.BoolVar(&c.remove, "remove-counters", false, "detach merlin's eBPF programs, delete their pins under -counters-pin-dir, and exit")
}

// config is the counters' configuration, nil when they are off.
func (c *counterFlags) config() (*xdpstats.Config, error) {
	cfg := &xdpstats.Config{XDPInterfaces: splitList(c.xdp), XDPMode: c.mode, TCInterfaces: splitList(c.tc),
		MaxVIPs: c.maxVIPs, MaxServers: c.maxServers, PinDir: c.pinDir}
	switch c.mode {
	case xdpstats.XDPAuto, xdpstats.XDPNative, xdpstats.XDPGeneric:
	default:
		return nil, fmt.Errorf("-counters-xdp-mode %q: want native, generic or empty", shorten(c.mode))
	}
	if len(cfg.XDPInterfaces)+len(cfg.TCInterfaces) == 0 {
		return nil, nil
	}
	if c.maxVIPs < 1 || c.maxServers < 1 {
		return nil, fmt.Errorf("-counters-max-vips %d / -counters-max-servers %d: want at least 1", c.maxVIPs, c.maxServers)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// openCounters loads and attaches the eBPF counters. Failing, merlin goes
// on reconciling IPVS without them: the reason is logged, in node status
// and in merlin_counters_up.
func openCounters(ctx context.Context, cfg *xdpstats.Config, log *slog.Logger) *xdpstats.Counter {
	c := xdpstats.New(*cfg, log)
	if err := c.Open(ctx); err != nil {
		log.Error("traffic counters off; IPVS is reconciled as usual", "error", err)
		return c
	}
	log.Info("traffic counters on", "attached", c.Status().Attached)
	return c
}

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
)

const countersPin = "/sys/fs/bpf/syncbench"

// countersOn loads merlin's eBPF counters on A as merlin would count this
// service — XDP where the clients' packets arrive (cli0), TC where IPVS
// sends to the backend (srv0), keyed by the VIP and the NAT server — or
// detaches and removes them.
func (l *lab) countersOn(on bool) error {
	return l.a.Do(func() error {
		if !on {
			if l.counter == nil {
				return nil
			}
			err := errors.Join(l.counter.Close(), xdpstats.Remove(countersPin))
			l.counter = nil
			return err
		}
		c := xdpstats.New(xdpstats.Config{XDPInterfaces: []string{"cli0"}, TCInterfaces: []string{"srv0"},
			MaxVIPs: xdpstats.DefaultMaxVIPs, MaxServers: xdpstats.DefaultMaxServers, PinDir: countersPin}, slog.New(slog.DiscardHandler))
		if err := c.Open(l.ctx); err != nil {
			return fmt.Errorf("counters: %w", err)
		}
		keys := xdpstats.Keys{
			VIPs:    []xdpstats.VIPKey{{Addr: netip.MustParseAddr(vip), Port: 80, Proto: xdpstats.TCP}},
			Servers: []xdpstats.ServerKey{{Method: xdpstats.NAT, Addr: netip.MustParseAddr(backend), Port: 8080, Proto: xdpstats.TCP}},
		}
		if err := c.Set(keys); err != nil {
			c.Close()
			return fmt.Errorf("counters: %w", err)
		}
		l.counter = c
		return nil
	})
}

// countedSYNs is what the counters saw of the runs since they were
// loaded: SYNs at XDP and forwarded to the backend at TC — proof that
// they were in the path.
func (l *lab) countedSYNs() (xdp, tc uint64, err error) {
	s, err := l.counter.Read()
	if err != nil {
		return 0, 0, err
	}
	for _, c := range s.VIPs {
		xdp += c.SYN
	}
	for _, c := range s.Forwarded {
		tc += c.SYN
	}
	return xdp, tc, nil
}

package bgp

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	base := func() Config {
		return Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"),
			Peers: []Peer{{Address: netip.MustParseAddr("192.0.2.254"), AS: 65000}}}
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		name, want string
		edit       func(*Config)
	}{
		{"no local AS", "bgp.local_as", func(c *Config) { c.LocalAS = 0 }},
		{"IPv6 router id", "bgp.router_id", func(c *Config) { c.RouterID = netip.MustParseAddr("2001:db8::1") }},
		{"listen port", "bgp.listen_port", func(c *Config) { c.ListenPort = 70000 }},
		{"peer without AS", "bgp.peers[0]: as", func(c *Config) { c.Peers[0].AS = 0 }},
		{"peer without address", "bgp.peers[0]: address", func(c *Config) { c.Peers[0].Address = netip.Addr{} }},
		{"peer twice", "bgp.peers[1].address", func(c *Config) { c.Peers = append(c.Peers, c.Peers[0]) }},
		{"short hold", "hold_time", func(c *Config) { c.Peers[0].HoldTime = time.Second }},
		{"keepalive over hold", "keepalive_time", func(c *Config) { c.Peers[0].KeepaliveTime = 2 * time.Minute }},
		{"fractional seconds", "whole seconds", func(c *Config) { c.Peers[0].HoldTime = 3500 * time.Millisecond }},
		{"ttl", "multihop_ttl", func(c *Config) { c.Peers[0].MultihopTTL = 256 }},
		{"restart time", "graceful_restart", func(c *Config) { c.Peers[0].GracefulRestart = 2 * time.Hour }},
		{"long password", "password", func(c *Config) { c.Peers[0].Password = strings.Repeat("x", 81) }},
		{"family", "families", func(c *Config) { c.Peers[0].Families = []Family{"l2vpn-evpn"} }},
		{"v6 over v4 without next hop", "next_hop_ipv6", func(c *Config) { c.Peers[0].Families = []Family{IPv6Unicast} }},
		{"local of another family", "local_address", func(c *Config) { c.Peers[0].Local = netip.MustParseAddr("::1") }},
		{"broadcast router id", "bgp.router_id", func(c *Config) { c.RouterID = netip.MustParseAddr("255.255.255.255") }},
		{"multicast router id", "bgp.router_id", func(c *Config) { c.RouterID = netip.MustParseAddr("224.0.0.1") }},
		{"broadcast peer", "bgp.peers[0]: address", func(c *Config) { c.Peers[0].Address = netip.MustParseAddr("255.255.255.255") }},
		{"multicast peer", "bgp.peers[0]: address", func(c *Config) { c.Peers[0].Address = netip.MustParseAddr("224.0.0.1") }},
		{"peer is this node", "bgp.peers[0].address 192.0.2.1: this node's own router id", func(c *Config) { c.Peers[0].Address = c.RouterID }},
		{"hold time over 16 bits", "hold_time", func(c *Config) { c.Peers[0].HoldTime = 100000 * time.Second }},
		{"negative connect retry", "connect_retry", func(c *Config) { c.Peers[0].ConnectRetry = -5 * time.Second }},
	} {
		c := base()
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to name %q", tc.name, err, tc.want)
		}
	}
}

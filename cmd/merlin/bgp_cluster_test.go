package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/types"
)

func clusterBGP(settings *types.BGPSettings, peers ...*types.BGPPeerConfig) *store.BGPConfig {
	c := &store.BGPConfig{Settings: settings, Peers: map[string]*types.BGPPeerConfig{}}
	for _, p := range peers {
		c.Peers[p.Name] = p
	}
	return c
}

func addrs(s ...string) func() []netip.Addr {
	return func() []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
}

// TestEffectiveBGP: the node's file over the cluster's configuration.
func TestEffectiveBGP(t *testing.T) {
	torA := &types.BGPPeerConfig{Name: "tor-a", Address: "198.18.6.1", As: 65000, Password: "k", NodeLabels: map[string]string{"rack": "r1"},
		HoldTime: durationpb.New(9 * time.Second), Bfd: true}
	torB := &types.BGPPeerConfig{Name: "tor-b", Address: "198.18.7.1", As: 65000, NodeLabels: map[string]string{"rack": "r2"}}
	core := &types.BGPPeerConfig{Name: "core", Address: "198.18.8.1", As: 65100, Nodes: []string{"n1", "n2"}}
	cluster := clusterBGP(&types.BGPSettings{LocalAs: 65001, RouterIdPrefix: "198.18.6.0/23"}, torA, torB, core)
	n1 := nodeBGP{node: "n1", labels: map[string]string{"rack": "r1"}}

	c, err := effectiveBGP(n1, cluster, addrs("127.0.0.1", "198.18.7.20", "198.18.6.10", "2001:db8::1"))
	if err != nil {
		t.Fatal(err)
	}
	if c.LocalAS != 65001 || c.RouterID != netip.MustParseAddr("198.18.6.10") || len(c.Peers) != 2 {
		t.Fatalf("n1: AS %d, router id %s, %d peers; want the cluster's AS, its lowest address in the prefix, tor-a and core", c.LocalAS, c.RouterID, len(c.Peers))
	}
	if p := c.Peers[1]; p.Address != netip.MustParseAddr("198.18.6.1") || p.Password != "k" || p.BFD == nil || p.HoldTime != 9*time.Second || p.Source != "cluster peer tor-a" {
		t.Fatalf("tor-a as the node takes it: %+v", p)
	}

	// The node's file: its AS and router id win, its peer replaces the
	// cluster's with the same address and adds another.
	n1.file = bgpFile{LocalAS: 65002, RouterID: "192.0.2.9", Peers: []peerFile{
		{Address: "198.18.6.1", AS: 65000, HoldTime: "30s"}, {Address: "198.18.9.1", AS: 65200}}}
	c, err = effectiveBGP(n1, cluster, addrs())
	if err != nil {
		t.Fatal(err)
	}
	if c.LocalAS != 65002 || c.RouterID != netip.MustParseAddr("192.0.2.9") || len(c.Peers) != 3 {
		t.Fatalf("with the file: AS %d, router id %s, %d peers", c.LocalAS, c.RouterID, len(c.Peers))
	}
	if p := c.Peers[1]; p.HoldTime != 30*time.Second || p.BFD != nil || p.Password != "" || p.Source != "node file" {
		t.Fatalf("the file's tor-a does not replace the cluster's: %+v", p)
	}

	n3 := nodeBGP{node: "n3", labels: map[string]string{"rack": "r2"}}
	if _, err := effectiveBGP(n3, cluster, addrs("10.0.0.3")); err == nil || !strings.Contains(err.Error(), "router_id_prefix 198.18.6.0/23") {
		t.Fatalf("a node without an address in the prefix: %v", err)
	}
	c, err = effectiveBGP(n3, cluster, addrs("198.18.7.3"))
	if err != nil || len(c.Peers) != 1 || c.Peers[0].Source != "cluster peer tor-b" {
		t.Fatalf("n3 (rack r2, not named by core): %+v, %v", c.Peers, err)
	}

	// No AS anywhere: BGP off, unless there are peers, which is an error.
	if c, err := effectiveBGP(nodeBGP{node: "n9"}, clusterBGP(&types.BGPSettings{}), addrs()); err != nil || c.LocalAS != 0 {
		t.Fatalf("nothing configured: %+v, %v", c, err)
	}
	if _, err := effectiveBGP(nodeBGP{node: "n1"}, clusterBGP(&types.BGPSettings{}, core), addrs()); err == nil || !strings.Contains(err.Error(), "no local AS") {
		t.Fatalf("peers without an AS: %v", err)
	}
	twice := &types.BGPPeerConfig{Name: "core-2", Address: "198.18.8.1", As: 65100}
	if _, err := effectiveBGP(n1, clusterBGP(cluster.Settings, core, twice), addrs("198.18.6.10")); err == nil || !strings.Contains(err.Error(), "another selected peer") {
		t.Fatalf("two selected peers with one address: %v", err)
	}
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// The node's BGP configuration is the cluster's (settings and the peers
// that select this node, in etcd) with the node's own file laid over it:
// each global setting the file gives wins, and a file peer replaces a
// cluster peer with the same address. It is applied live: when either
// changes (an etcd update; SIGHUP re-reads the file), the speaker gets the
// whole new configuration and moves only the sessions that changed.

// nodeBGP is what the file says of this node.
type nodeBGP struct {
	file   bgpFile
	node   string
	labels map[string]string
}

// effectiveBGP merges the cluster's configuration with the node's own.
// addrs lists this node's addresses (for the router id prefix). A
// configuration without a local AS is BGP off, and must have no peers.
func effectiveBGP(n nodeBGP, cluster *store.BGPConfig, addrs func() []netip.Addr) (bgp.Config, error) {
	f := n.file
	settings := &types.BGPSettings{}
	if cluster != nil {
		settings = cluster.Settings
	}
	if f.LocalAS == 0 {
		f.LocalAS = settings.GetLocalAs()
	}
	if f.ListenPort == 0 {
		f.ListenPort = int(settings.GetListenPort())
	}
	if f.RouterID == "" && settings.GetRouterIdPrefix() != "" && f.LocalAS != 0 {
		id, err := routerIDIn(settings.GetRouterIdPrefix(), addrs())
		if err != nil {
			return bgp.Config{}, err
		}
		f.RouterID = id.String()
	}
	peers, err := clusterPeers(cluster, n)
	if err != nil {
		return bgp.Config{}, err
	}
	filePeers := f.Peers
	f.Peers = nil
	c, err := bgpGlobal(f)
	if err != nil {
		return bgp.Config{}, err
	}
	for i, pf := range filePeers {
		p, err := pf.peer()
		if err != nil {
			return bgp.Config{}, fmt.Errorf("bgp.peers[%d]: %w", i, err)
		}
		p.Source = "node file"
		if j := slices.IndexFunc(peers, func(q bgp.Peer) bool { return q.Address == p.Address }); j >= 0 {
			peers[j] = p // the node's own file wins
		} else {
			peers = append(peers, p)
		}
	}
	c.Peers = peers
	if c.LocalAS == 0 {
		if len(peers) > 0 {
			return bgp.Config{}, fmt.Errorf("bgp: %d peers but no local AS (bgp.local_as in the node's file, or meradm bgp settings --local-as)", len(peers))
		}
		return bgp.Config{}, nil
	}
	if err := c.Validate(); err != nil {
		return bgp.Config{}, err
	}
	return c, nil
}

// clusterPeers are the cluster's peers that select this node, by name.
func clusterPeers(cluster *store.BGPConfig, n nodeBGP) ([]bgp.Peer, error) {
	var out []bgp.Peer
	for _, cp := range cluster.SortedPeers() {
		if !model.PeerSelects(cp, n.node, n.labels) {
			continue
		}
		p, err := clusterPeerFile(cp).peer()
		if err != nil {
			return nil, fmt.Errorf("cluster bgp peer %s: %w", cp.GetName(), err)
		}
		p.Password = cp.GetPassword() // from etcd; never logged
		p.Source = "cluster peer " + cp.GetName()
		if slices.ContainsFunc(out, func(q bgp.Peer) bool { return q.Address == p.Address }) {
			return nil, fmt.Errorf("cluster bgp peer %s: address %s is another selected peer's too (narrow their nodes or node_labels)", cp.GetName(), p.Address)
		}
		out = append(out, p)
	}
	return out, nil
}

// clusterPeerFile spells a cluster peer as a file peer: one conversion,
// one set of checks and errors for both.
func clusterPeerFile(cp *types.BGPPeerConfig) peerFile {
	dur := func(d interface{ AsDuration() time.Duration }, set bool) string {
		if !set {
			return ""
		}
		return d.AsDuration().String()
	}
	return peerFile{Address: cp.GetAddress(), AS: cp.GetAs(), Port: int(cp.GetPort()), LocalAddress: cp.GetLocalAddress(),
		PasswordFile: cp.GetPasswordFile(), HoldTime: dur(cp.GetHoldTime(), cp.GetHoldTime() != nil),
		KeepaliveTime: dur(cp.GetKeepaliveTime(), cp.GetKeepaliveTime() != nil), ConnectRetry: dur(cp.GetConnectRetry(), cp.GetConnectRetry() != nil),
		MultihopTTL: int(cp.GetMultihopTtl()), Passive: cp.GetPassive(), GracefulRestart: dur(cp.GetGracefulRestart(), cp.GetGracefulRestart() != nil),
		Families: cp.GetFamilies(), MaxPrefixes: cp.GetMaxPrefixes(),
		MaxPrefixesRestart: dur(cp.GetMaxPrefixesRestart(), cp.GetMaxPrefixesRestart() != nil),
		BFD:                cp.GetBfd(), BFDMinTx: dur(cp.GetBfdMinTx(), cp.GetBfdMinTx() != nil), BFDMinRx: dur(cp.GetBfdMinRx(), cp.GetBfdMinRx() != nil),
		BFDMultiplier: uint8(min(cp.GetBfdMultiplier(), 255))}
}

// routerIDIn is this node's IPv4 address inside prefix (the lowest, if
// several are).
func routerIDIn(prefix string, addrs []netip.Addr) (netip.Addr, error) {
	pfx, err := netip.ParsePrefix(prefix)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("bgp settings router_id_prefix %q: %w", model.Truncate(prefix, 64), err)
	}
	var found []netip.Addr
	for _, a := range addrs {
		if a = a.Unmap(); a.Is4() && pfx.Contains(a) {
			found = append(found, a)
		}
	}
	if len(found) == 0 {
		return netip.Addr{}, fmt.Errorf("bgp router id: this node has no address in the cluster's router_id_prefix %s (set bgp.router_id in its file)", pfx)
	}
	slices.SortFunc(found, netip.Addr.Compare)
	return found[0], nil
}

// interfaceAddrs lists this node's addresses.
func interfaceAddrs() []netip.Addr {
	as, _ := net.InterfaceAddrs()
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// bgpApplier keeps the speaker's configuration the merge of the latest
// cluster configuration and the node's file, until its context ends.
type bgpApplier struct {
	speaker *bgp.Supervised
	log     *slog.Logger
	wake    chan struct{}

	mu      sync.Mutex
	node    nodeBGP
	cluster *store.BGPConfig
	listed  bool // the cluster's configuration has been read
}

func newBGPApplier(s *bgp.Supervised, n nodeBGP, log *slog.Logger) *bgpApplier {
	return &bgpApplier{speaker: s, node: n, log: log, wake: make(chan struct{}, 1)}
}

// Offer takes the cluster's configuration from a watcher update.
func (a *bgpApplier) Offer(c *store.BGPConfig) {
	a.mu.Lock()
	same := a.listed && (a.cluster == c || a.cluster.Equal(c)) // shared until the BGP keys change
	a.cluster, a.listed = c, true
	a.mu.Unlock()
	if !same {
		a.poke()
	}
}

// SetNode takes the node's own configuration (re-read on SIGHUP).
func (a *bgpApplier) SetNode(n nodeBGP) {
	a.mu.Lock()
	a.node = n
	a.mu.Unlock()
	a.poke()
}

func (a *bgpApplier) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Run applies each new configuration until ctx ends. Before the cluster's
// configuration is read the node's own applies (a node without etcd still
// peers as its file says). One that does not validate is not applied: the
// speaker keeps the last good one and node status says why.
func (a *bgpApplier) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		}
		a.mu.Lock()
		n, cluster := a.node, a.cluster
		a.mu.Unlock()
		cfg, err := effectiveBGP(n, cluster, interfaceAddrs)
		if err == nil {
			err = a.speaker.SetConfig(cfg)
		}
		if err != nil {
			a.log.Error("bgp configuration not applied; keeping the last one", "error", err)
		}
		a.speaker.NoteConfigError(err)
	}
}

package node

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/chunklist"
	"github.com/merlin-ipvs/merlin/types"
)

// Plan is everything the planner decided for this node at one desired
// revision: each service as programmed, and what derives from all of them.
// Sinks read it and never modify it.
type Plan struct {
	Revision int64
	Services map[string]*ServicePlan
	Node     NodePlan
	// ServerDrains: the real servers being drained (shared; never modified).
	ServerDrains map[string]store.ServerDrain
	// Changed names the services whose plans may differ from those in the
	// plan this sink was last given (a service plan is replaced, never
	// modified): a sink may look only at those. Nil when unknown — the
	// sink's first plan, or the first after it failed: look at every one.
	Changed map[string]bool
	// ChangedVIPs names the VIP addresses whose states (Node.VIPStates)
	// may differ from those in the plan this sink was last given. Nil when
	// unknown: as Changed, or when something every VIP's state depends on
	// changed (the node's readiness, drain, failures, link bandwidth).
	ChangedVIPs map[netip.Addr]bool
}

// A Sink programs one part of the dataplane from the whole plan. Set is
// idempotent and level-triggered: given the same plan twice it changes
// nothing the second time. A sink that fails is retried with backoff and
// reported on its own; it never holds up the others. (IPVS, which diffs
// only what may have changed, is the runner's own: sink_ipvs.go.)
type Sink interface {
	Name() string
	Set(ctx context.Context, p *Plan) error
}

// A Timed sink wants Set again at Due (zero: never) even when the plan has
// not changed: something it held back is then to be sent.
type Timed interface {
	Due() time.Time
}

// A Reporter is a sink with something of its own to say in node status
// (the BGP sessions, the counters' state). The runner asks it every
// reportPeriod and whenever Changed fires (a nil channel: never), and puts
// what Report returns into node status.
type Reporter interface {
	Report(ctx context.Context) (func(*types.NodeStatus), error)
	Changed() <-chan struct{}
}

// VIPSink puts the VIPs a node serves on an interface (datapath/netif).
type VIPSink interface {
	SetVIPs(ctx context.Context, vips []netip.Addr) error
}

// vipSink gives the plan's VIP addresses to a VIPSink when they change.
type vipSink struct {
	vips VIPSink
	last chunklist.List[netip.Addr]
	set  bool
}

// membersChanged: a changed VIP came or went (VIPs and last are sorted).
func (s *vipSink) membersChanged(p *Plan) bool {
	for addr := range p.ChangedVIPs {
		_, was := chunklist.Find(s.last, addr, identity, netip.Addr.Compare)
		_, is := chunklist.Find(p.Node.VIPs, addr, identity, netip.Addr.Compare)
		if was != is {
			return true
		}
	}
	return false
}

// NewVIPSink is the sink that keeps the VIP addresses of the plan on an
// interface.
func NewVIPSink(v VIPSink) Sink { return &vipSink{vips: v} }

func (s *vipSink) Name() string { return "vips" }

func (s *vipSink) Set(ctx context.Context, p *Plan) error {
	if s.set && p.ChangedVIPs != nil && !s.membersChanged(p) {
		return nil // looked at only the changed VIPs
	}
	vips := p.Node.VIPs.Slice()
	if s.set && slices.Equal(vips, s.last.Slice()) {
		return nil
	}
	if err := s.vips.SetVIPs(ctx, vips); err != nil {
		return err
	}
	s.last, s.set = p.Node.VIPs, true
	return nil
}

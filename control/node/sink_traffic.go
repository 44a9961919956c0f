package node

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// Counters is what the traffic sink drives: xdpstats.Counter.
type Counters interface {
	Set(keys xdpstats.Keys) error
	Update(add, remove xdpstats.Keys) error
	Read() (xdpstats.Snapshot, error)
	ReadEach(v xdpstats.Visit) error
	Status() xdpstats.Status
}

// KernelCounters reads the kernel's IPVS counters: ipvs.Client.
type KernelCounters interface {
	StatsEach(ctx context.Context, keep func(ipvs.ServiceKey) bool, fn func(ipvs.ServiceStats)) error
}

// Traffic is the node's traffic counting, in four parts that share only
// the plan's counter index: the sink keeping the eBPF counters' keys equal
// to the plan's (Sink), the background read of the kernel's IPVS counters
// and the eBPF counters (RunReads), the collector writing the last read
// under the plan's service IDs on each scrape (WriteMetrics), and passive
// health's judge (RunPassive).
type Traffic struct {
	kernel   KernelCounters // nil: no IPVS counters
	counters Counters       // nil: no eBPF counters configured
	opts     TrafficOptions
	backend  []backendFamily // the per-backend families exported
	index    *planIndex
	sink     *countersSink
	passive  *passiveHealthJudge
	// The last background reads (nil: none yet), written by scrapes.
	ipvsRead, countersRead atomic.Pointer[partRead]
	writing                atomic.Int32 // scrapes writing now: background reads wait
}

// TrafficOptions configure the background read and what it exports.
type TrafficOptions struct {
	// ReadInterval is the pause between the end of one background read
	// and the start of the next (0: DefaultReadInterval).
	ReadInterval time.Duration
	// ReadTimeout bounds one read of the kernel's IPVS counters (0:
	// DefaultReadTimeout); a read cut short exports what it got.
	ReadTimeout time.Duration
	// BackendFamilies are the per-backend families to export (see
	// ParseBackendFamilies; nil: none).
	BackendFamilies []string
}

// Defaults of TrafficOptions.
const (
	DefaultReadInterval = 15 * time.Second
	DefaultReadTimeout  = 5 * time.Minute
)

// NewTraffic returns the traffic sink and collector; kernel or counters may
// be nil. It starts nothing: run RunReads (and RunPassive).
func NewTraffic(kernel KernelCounters, counters Counters, opts TrafficOptions) *Traffic {
	if opts.ReadInterval <= 0 {
		opts.ReadInterval = DefaultReadInterval
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	idx := &planIndex{first: make(chan struct{})}
	return &Traffic{kernel: kernel, counters: counters, opts: opts, backend: selectedFamilies(opts.BackendFamilies), index: idx,
		sink: &countersSink{counters: counters, index: idx}, passive: &passiveHealthJudge{counters: counters, index: idx}}
}

// planIndex is the plan's counter index: the sink changes it in place, a
// change at a time; the collector and the judge read copies, shared
// between readers until the index changes.
type planIndex struct {
	mu      sync.Mutex
	idx     CounterIndex
	passive map[xdpstats.ServerKey]PassiveJudge // readers' copy of idx.Passive; nil: stale
	set1    bool
	first   chan struct{} // closed when the first plan's index is set
}

// edit changes the index in place.
func (p *planIndex) edit(fn func(idx *CounterIndex)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.idx.VIPs == nil {
		p.idx = newCounterIndex()
	}
	fn(&p.idx)
	p.passive = nil
	if !p.set1 {
		p.set1 = true
		close(p.first)
	}
}

// Background reads look each key up as they meet it rather than hold a
// copy of the index (a copy of 100,000 servers' labels is 13 MiB, made
// again after each change): a read already sees keys of the plans before
// and after a change, and its labels are those of the moment it met them.

// server is key's label, if the plan names it.
func (p *planIndex) server(k xdpstats.ServerKey) (ServerLabel, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.idx.Servers[k]
	return l, ok
}

// vip is the ID of the service whose VIP key k is, if any.
func (p *planIndex) vip(k xdpstats.VIPKey) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.idx.VIPs[k]
	return id, ok
}

// service is the ID of merlin's service with kernel key k (canonical), if any.
func (p *planIndex) service(k ipvs.ServiceKey) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.idx.Services[k]
	return id, ok
}

// sizes are how many VIP, server and service keys the index holds.
func (p *planIndex) sizes() (vips, servers, services int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idx.VIPs), len(p.idx.Servers), len(p.idx.Services)
}

// passiveJudges is the judged servers (shared, not to be changed; copied
// once per change of the index).
func (p *planIndex) passiveJudges() map[xdpstats.ServerKey]PassiveJudge {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.passive == nil {
		p.passive = maps.Clone(p.idx.Passive)
		if p.passive == nil {
			p.passive = map[xdpstats.ServerKey]PassiveJudge{}
		}
	}
	return p.passive
}

// Sink is the traffic sink: give it to the runner (RunnerDeps.Sinks).
func (t *Traffic) Sink() Sink { return trafficSink{t} }

type trafficSink struct{ t *Traffic }

func (s trafficSink) Name() string { return "counters" }

func (s trafficSink) Set(ctx context.Context, p *Plan) error { return s.t.sink.set(ctx, p) }

// countersSink keeps the eBPF counters' keys and the counter index equal
// to the plan's: after the first plan only the changed services are looked
// at and only their keys written. Only the runner calls it.
type countersSink struct {
	counters Counters
	index    *planIndex
	claims   *counterClaims // nil: rebuild from the whole plan
	keysSet  bool           // the counters hold the claims' keys
}

func (c *countersSink) set(_ context.Context, p *Plan) error {
	full := p.Changed == nil || c.claims == nil
	var ch keyChanges
	c.index.edit(func(idx *CounterIndex) {
		if full {
			*idx, c.claims, c.keysSet = newCounterIndex(), newCounterClaims(), false
			for id, sp := range p.Services {
				c.claims.update(idx, id, sp, &ch)
			}
			return
		}
		for id := range p.Changed {
			c.claims.update(idx, id, p.Services[id], &ch)
		}
	})
	// Counters that are off say why in their status; the sink does not
	// retry what only an operator can fix.
	if c.counters == nil || !c.counters.Status().On {
		return nil
	}
	if !c.keysSet {
		if err := c.counters.Set(c.claims.keys()); err != nil {
			c.claims = nil // the next plan sets every key again
			return err
		}
		c.keysSet = true
		return nil
	}
	if ch.empty() {
		return nil
	}
	if err := c.counters.Update(ch.split()); err != nil {
		c.claims = nil
		return err
	}
	return nil
}

// CountersStatus is the counters' state for node status (nil without
// counters).
func (t *Traffic) CountersStatus() *types.CountersStatus {
	if t.counters == nil {
		return nil
	}
	st := t.counters.Status()
	out := &types.CountersStatus{On: st.On, Reason: model.Truncate(st.Reason, 512), Keys: uint32(st.Keys), KeysDropped: uint32(st.Dropped), UnresolvedServers: uint32(st.Unresolved)}
	for _, a := range st.Attached {
		out.Attached = append(out.Attached, a.Interface+" "+a.Hook)
	}
	out.PassiveFailing = t.passive.failing()
	return out
}

// Report puts the counters' state (and the failing servers passive
// health sees) into node status.
func (s trafficSink) Report(context.Context) (func(*types.NodeStatus), error) {
	st := s.t.CountersStatus()
	return func(ns *types.NodeStatus) { ns.Counters = st }, nil
}

// Changed: the counters are only asked every reportPeriod.
func (s trafficSink) Changed() <-chan struct{} { return nil }

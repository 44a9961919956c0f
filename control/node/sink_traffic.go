package node

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// Counters is what the traffic sink drives: xdpstats.Counter.
type Counters interface {
	Set(keys xdpstats.Keys) error
	Read() (xdpstats.Snapshot, error)
	Status() xdpstats.Status
}

// KernelCounters reads the kernel's IPVS counters: ipvs.Client.
type KernelCounters interface {
	Stats(ctx context.Context, keep func(ipvs.ServiceKey) bool) ([]ipvs.ServiceStats, error)
}

// Traffic is the node's traffic counting, in three parts that share only
// the plan's counter index: the sink keeping the eBPF counters' keys equal
// to the plan's (Sink), the collector exporting the kernel's IPVS counters
// and the eBPF counters under the plan's service IDs on each scrape
// (WriteMetrics), and passive health's judge (RunPassive).
type Traffic struct {
	kernel   KernelCounters // nil: no IPVS counters
	counters Counters       // nil: no eBPF counters configured
	timeout  time.Duration
	index    *planIndex
	sink     *countersSink
	passive  *passiveHealthJudge
}

// DefaultScrapeTimeout bounds the kernel reads of one scrape.
const DefaultScrapeTimeout = 5 * time.Second

// NewTraffic returns the traffic sink and collector; kernel or counters may
// be nil. timeout bounds the kernel reads of one scrape (0: the default).
func NewTraffic(kernel KernelCounters, counters Counters, timeout time.Duration) *Traffic {
	if timeout <= 0 {
		timeout = DefaultScrapeTimeout
	}
	idx := &planIndex{}
	return &Traffic{kernel: kernel, counters: counters, timeout: timeout, index: idx,
		sink: &countersSink{counters: counters, index: idx}, passive: &passiveHealthJudge{counters: counters, index: idx}}
}

// planIndex is the plan's counter index: the sink sets it, the collector
// and the judge read it.
type planIndex struct {
	mu  sync.Mutex
	idx CounterIndex
}

func (p *planIndex) set(idx CounterIndex) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.idx = idx
}

func (p *planIndex) get() CounterIndex {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.idx
}

// Sink is the traffic sink: give it to the runner (RunnerDeps.Sinks).
func (t *Traffic) Sink() Sink { return trafficSink{t} }

type trafficSink struct{ t *Traffic }

func (s trafficSink) Name() string { return "counters" }

func (s trafficSink) Set(ctx context.Context, p *Plan) error { return s.t.sink.set(ctx, p) }

// countersSink gives the eBPF counters the plan's keys when they change.
// Only the runner calls it.
type countersSink struct {
	counters Counters
	index    *planIndex
	lastKeys xdpstats.Keys
	keysSet  bool
}

func (c *countersSink) set(_ context.Context, p *Plan) error {
	keys, idx := PlanCounterKeys(p)
	c.index.set(idx)
	unchanged := c.keysSet && slices.Equal(keys.VIPs, c.lastKeys.VIPs) && slices.Equal(keys.Servers, c.lastKeys.Servers)
	// Counters that are off say why in their status; the sink does not
	// retry what only an operator can fix.
	if c.counters == nil || unchanged || !c.counters.Status().On {
		return nil
	}
	if err := c.counters.Set(keys); err != nil {
		return err
	}
	c.lastKeys, c.keysSet = keys, true
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

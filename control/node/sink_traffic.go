package node

import (
	"context"
	"slices"
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
	Read() (xdpstats.Snapshot, error)
	Status() xdpstats.Status
}

// KernelCounters reads the kernel's IPVS counters: ipvs.Client.
type KernelCounters interface {
	Stats(ctx context.Context, keep func(ipvs.ServiceKey) bool) ([]ipvs.ServiceStats, error)
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

// planIndex is the plan's counter index: the sink sets it, the collector
// and the judge read it.
type planIndex struct {
	mu    sync.Mutex
	idx   CounterIndex
	set1  bool
	first chan struct{} // closed when the first plan's index is set
}

func (p *planIndex) set(idx CounterIndex) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.idx = idx
	if !p.set1 {
		p.set1 = true
		close(p.first)
	}
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

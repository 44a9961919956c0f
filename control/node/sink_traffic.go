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

// Traffic keeps the eBPF counters' keys equal to the plan's (as a sink)
// and exports the kernel's IPVS counters and the eBPF counters under the
// plan's service IDs (WriteMetrics, reading on each scrape).
type Traffic struct {
	kernel   KernelCounters // nil: no IPVS counters
	counters Counters       // nil: no eBPF counters configured
	timeout  time.Duration

	mu       sync.Mutex
	idx      CounterIndex
	lastKeys xdpstats.Keys
	keysSet  bool
	passive  passiveState
}

// DefaultScrapeTimeout bounds the kernel reads of one scrape.
const DefaultScrapeTimeout = 5 * time.Second

// NewTraffic returns the traffic sink and collector; kernel or counters may
// be nil. timeout bounds the kernel reads of one scrape (0: the default).
func NewTraffic(kernel KernelCounters, counters Counters, timeout time.Duration) *Traffic {
	if timeout <= 0 {
		timeout = DefaultScrapeTimeout
	}
	return &Traffic{kernel: kernel, counters: counters, timeout: timeout}
}

// Sink is the traffic sink: give it to the runner (RunnerDeps.Sinks).
func (t *Traffic) Sink() Sink { return trafficSink{t} }

type trafficSink struct{ t *Traffic }

func (s trafficSink) Name() string { return "counters" }

func (s trafficSink) Set(_ context.Context, p *Plan) error {
	keys, idx := PlanCounterKeys(p)
	t := s.t
	t.mu.Lock()
	t.idx = idx
	unchanged := t.keysSet && slices.Equal(keys.VIPs, t.lastKeys.VIPs) && slices.Equal(keys.Servers, t.lastKeys.Servers)
	t.mu.Unlock()
	// Counters that are off say why in their status; the sink does not
	// retry what only an operator can fix.
	if t.counters == nil || unchanged || !t.counters.Status().On {
		return nil
	}
	if err := t.counters.Set(keys); err != nil {
		return err
	}
	t.mu.Lock()
	t.lastKeys, t.keysSet = keys, true
	t.mu.Unlock()
	return nil
}

func (t *Traffic) index() CounterIndex {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.idx
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
	out.PassiveFailing = t.passiveFailing()
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

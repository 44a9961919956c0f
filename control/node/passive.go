package node

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/types"
)

// PassiveJudge is how one NAT server's passive health is judged.
type PassiveJudge struct {
	Label            ServerLabel
	Check            health.Check // the server's active check, which failures count against
	Window           time.Duration
	MinAttempts      uint32
	MaxFailedPercent uint32
}

// PassiveFigures are one server's connection attempts over a window.
type PassiveFigures struct {
	Attempts, Answered, Refused uint64
}

// Failed: the share of attempts that got no SYN-ACK is over the limit.
func (f PassiveFigures) Failed(j PassiveJudge) bool {
	if f.Attempts < uint64(max(j.MinAttempts, 1)) {
		return false
	}
	unanswered := f.Attempts - min(f.Answered, f.Attempts)
	return unanswered*100 > uint64(j.MaxFailedPercent)*f.Attempts
}

// attemptCounts are the running totals the window subtracts.
type attemptCounts struct{ syn, synack, rst uint64 }

type passiveSample struct {
	at     time.Time
	counts map[xdpstats.ServerKey]attemptCounts
}

// passiveWindow keeps counter samples of the judged servers long enough
// for the longest window. Pure: the caller passes the time.
type passiveWindow struct{ samples []passiveSample }

func (w *passiveWindow) observe(now time.Time, snap xdpstats.Snapshot, judged map[xdpstats.ServerKey]PassiveJudge, keep time.Duration) {
	s := passiveSample{at: now, counts: make(map[xdpstats.ServerKey]attemptCounts, len(judged))}
	for k := range judged {
		f, r := snap.Forwarded[k], snap.Replies[k]
		s.counts[k] = attemptCounts{syn: f.SYN, synack: r.SYNACK, rst: r.RST}
	}
	w.samples = append(w.samples, s)
	// Keep the newest sample at or before now-keep as the window's base.
	cut := 0
	for i, old := range w.samples {
		if !old.at.After(now.Add(-keep)) {
			cut = i
		}
	}
	w.samples = slices.Delete(w.samples, 0, cut)
}

// figures are a server's attempts between the newest sample and the newest
// one at least window older (or the oldest there is).
func (w *passiveWindow) figures(k xdpstats.ServerKey, window time.Duration) PassiveFigures {
	if len(w.samples) < 2 {
		return PassiveFigures{}
	}
	last := w.samples[len(w.samples)-1]
	base := w.samples[0]
	for _, s := range w.samples {
		if !s.at.After(last.at.Add(-window)) {
			base = s
		}
	}
	now, then := last.counts[k], base.counts[k]
	delta := func(a, b uint64) uint64 {
		if a < b { // the counters restarted
			return a
		}
		return a - b
	}
	return PassiveFigures{Attempts: delta(now.syn, then.syn), Answered: delta(now.synack, then.synack), Refused: delta(now.rst, then.rst)}
}

// HealthReporter takes results found outside the probes: health.Monitor.
type HealthReporter interface {
	Report(c health.Check, err error) bool
}

// PassivePeriod is how often passive health reads the counters and judges.
const PassivePeriod = time.Second

// passiveHealthJudge judges the servers of services with passive health from
// the eBPF counters; what it last found is for metrics and status.
type passiveHealthJudge struct {
	counters Counters
	index    *planIndex

	mu      sync.Mutex
	window  passiveWindow
	figures map[xdpstats.ServerKey]PassiveFigures
}

// RunPassive judges the servers of services with passive health every
// PassivePeriod until ctx ends; each failing server counts one failed
// result against its active check.
func (t *Traffic) RunPassive(ctx context.Context, h HealthReporter) {
	tick := time.NewTicker(PassivePeriod)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			t.passive.judge(now, h)
		}
	}
}

func (p *passiveHealthJudge) judge(now time.Time, h HealthReporter) {
	judged := p.index.passiveJudges()
	if p.counters == nil || len(judged) == 0 {
		p.mu.Lock()
		p.window, p.figures = passiveWindow{}, nil
		p.mu.Unlock()
		return
	}
	snap, err := p.counters.Read()
	if err != nil {
		return
	}
	keep := time.Duration(0)
	for _, j := range judged {
		keep = max(keep, j.Window)
	}
	p.mu.Lock()
	p.window.observe(now, snap, judged, keep)
	figs := make(map[xdpstats.ServerKey]PassiveFigures, len(judged))
	for k, j := range judged {
		figs[k] = p.window.figures(k, j.Window)
	}
	p.figures = figs
	p.mu.Unlock()
	for k, j := range judged {
		if f := figs[k]; f.Failed(j) {
			h.Report(j.Check, fmt.Errorf("passive: %d of %d connection attempts in %s not answered (%d refused)", f.Attempts-min(f.Answered, f.Attempts), f.Attempts, j.Window, f.Refused))
		}
	}
}

// lastFigures is what the last judgement found (shared, not to be changed).
func (p *passiveHealthJudge) lastFigures() map[xdpstats.ServerKey]PassiveFigures {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.figures
}

// maxPassiveFailing bounds the failing servers listed in node status.
const maxPassiveFailing = 32

// failing lists judged servers with unanswered attempts, most first.
func (p *passiveHealthJudge) failing() []*types.PassiveFigures {
	judged, figures := p.index.passiveJudges(), p.lastFigures()
	var out []*types.PassiveFigures
	for _, k := range slices.SortedFunc(maps.Keys(figures), func(a, b xdpstats.ServerKey) int { return a.Addr.Compare(b.Addr) }) {
		f, j := figures[k], judged[k]
		if f.Attempts <= f.Answered {
			continue
		}
		out = append(out, &types.PassiveFigures{ServiceId: j.Label.Service, Server: j.Label.Server, Attempts: f.Attempts, Answered: f.Answered, Refused: f.Refused, Window: durationpb.New(j.Window)})
	}
	slices.SortStableFunc(out, func(a, b *types.PassiveFigures) int {
		return int(int64(b.Attempts-b.Answered) - int64(a.Attempts-a.Answered))
	})
	if len(out) > maxPassiveFailing {
		out = out[:maxPassiveFailing]
	}
	return out
}

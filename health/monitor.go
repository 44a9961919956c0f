package health

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// State of one check.
type State struct {
	Up        bool
	Since     time.Time // of the last transition (or of the start)
	LastError string    // of the last failed probe, while failing
	// Transitioned: the state came from a probe result, not the initial
	// assumption (slow start applies only then).
	Transitioned bool
	// Settled: a probe result agrees with Up; until then Up is the
	// initial assumption (a node announces nothing before its checks settle).
	Settled bool
	// Checked is when the last probe result came in (zero: none yet); a
	// monitor whose results stop coming is stuck.
	Checked time.Time
}

// Observer hears about every probe and transition (metrics).
type Observer interface {
	Probed(c Check, took time.Duration, err error)
	Transition(c Check, up bool)
}

// Monitor runs each distinct check on its own schedule: starts are spread
// over the interval and follow each other an interval apart, a check goes
// down after Fall consecutive failures and up after Rise consecutive
// successes. TCP and plain HTTP checks share one event loop (see
// probeLoop); the others run a goroutine each.
type Monitor struct {
	prober   *Prober
	log      *slog.Logger
	observer Observer

	mu      sync.Mutex
	runners map[Check]*runner
	loop    *probeLoop // started with the first check it runs
	changed chan struct{}
	news    map[*runner]struct{} // runners whose state changed since TakeChanged
	// The latest due of any check's next results (three rounds after its
	// last result) and that result's time: see Stale.
	staleAt, staleSince time.Time
	maxChecks           int
	wg                  sync.WaitGroup
	closed              bool
}

type runner struct {
	check     Check
	cancel    context.CancelFunc // goroutine runners
	looped    bool               // run by the probe loop
	idle      bool               // never run: no prober on this node, or over the limit
	overLimit bool               // idle for the limit: looked at again on every Set
	removed   bool               // results arriving after removal are dropped
	state     State
	succ      int
	fails     int
}

// NewMonitor returns a monitor; observer may be nil.
func NewMonitor(log *slog.Logger, observer Observer) *Monitor {
	return &Monitor{prober: NewProber(), log: log, observer: observer, runners: map[Check]*runner{}, changed: make(chan struct{}, 1), news: map[*runner]struct{}{}}
}

// Handle makes the monitor probe checks of kind k with kp (for example
// gRPC checks with health/grpcprobe). Call it before Set.
func (m *Monitor) Handle(k Kind, kp KindProber) { m.prober.Handle(k, kp) }

// Disable says why checks of kind k are not run on this node. Checks of a
// kind without a prober are never started: they stay down, settled, with
// the reason as their error. Call it before Set.
func (m *Monitor) Disable(k Kind, reason string) { m.prober.disabled[k] = reason }

// Changes receives a value after any check changes state; TakeChanged
// says which.
func (m *Monitor) Changes() <-chan struct{} { return m.changed }

// Stale is when the monitor looks stuck if no result comes before: three
// rounds (interval and timeout) of the check whose due is latest after its
// last result, and that result's time; zero before any result. A check
// removed may hold it later, for at most its three rounds.
func (m *Monitor) Stale() (at, since time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.staleAt, m.staleSince
}

// TakeChanged returns the checks whose state changed (went up or down, or
// had the first result confirming their initial state) since it was last
// called, and forgets them: a node with 100,000 checks looks again only
// at the servers those probe.
func (m *Monitor) TakeChanged() []Check {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Check, 0, len(m.news))
	for r := range m.news {
		if !r.removed {
			out = append(out, r.check)
		}
	}
	clear(m.news)
	return out
}

func (m *Monitor) notify() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// Set makes the monitor run exactly these checks; initial gives the state
// a new check starts in (true: up). Unchanged checks keep running; a check
// that changed but probes the same target (Identity) keeps its state;
// removed checks stop.
func (m *Monitor) Set(want map[Check]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	removed := map[string]*runner{}
	for c, r := range m.runners {
		if _, ok := want[c]; !ok || r.overLimit {
			m.stopRunner(r)
			delete(m.runners, c)
			if !r.overLimit {
				removed[c.Identity()] = r
			}
		}
	}
	over := 0
	for _, c := range m.startOrder(want) {
		initialUp := want[c]
		if _, ok := m.runners[c]; ok {
			continue
		}
		if m.maxChecks > 0 && len(m.runners) >= m.maxChecks {
			m.runners[c] = &runner{check: c, idle: true, overLimit: true, state: State{Since: time.Now(), Settled: true, LastError: fmt.Sprintf("not run: over this node's limit of %d health checks", m.maxChecks)}}
			over++
			continue
		}
		if c.Interval <= 0 || c.Timeout <= 0 {
			m.log.Warn("health check without an interval or timeout not started", "check", c.String())
			continue
		}
		if !m.prober.runs(c.Kind) {
			m.runners[c] = &runner{check: c, idle: true, state: State{Since: time.Now(), Settled: true, LastError: m.prober.notRun(c.Kind)}}
			m.log.Warn("health check not run", "check", c.String(), "reason", m.prober.notRun(c.Kind))
			continue
		}
		r := &runner{check: c, state: State{Up: initialUp, Since: time.Now()}}
		if old, ok := removed[c.Identity()]; ok {
			r.state = old.state
			delete(removed, c.Identity())
		}
		m.runners[c] = r
		if loopable(c) {
			if m.loop == nil {
				loop, err := newProbeLoop(m, &m.wg)
				if err == nil {
					m.loop = loop
				} else {
					m.log.Warn("health probe loop unavailable; TCP and HTTP checks run one goroutine each", "error", err)
				}
			}
			if m.loop != nil {
				r.looped = true
				m.loop.send(loopCommand{add: r})
				continue
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel = cancel
		m.wg.Add(1)
		go m.run(ctx, r)
	}
	if over > 0 {
		m.log.Warn("health checks over this node's limit not run", "not_run", over, "limit", m.maxChecks)
	}
	m.stopIdleLoop()
}

// SetMaxChecks bounds the checks the monitor runs (0: no bound). Checks
// beyond it stay down with the reason; those already running keep their
// place, the others come in a fixed order. Call it before Set.
func (m *Monitor) SetMaxChecks(n int) { m.maxChecks = n }

// startOrder: running checks first, then the others in a fixed order, so
// that a bound on the number of checks keeps the same ones.
func (m *Monitor) startOrder(want map[Check]bool) []Check {
	order := slices.Collect(maps.Keys(want))
	if m.maxChecks == 0 || len(want) <= m.maxChecks {
		return order
	}
	// Each check's place is worked out once, not per comparison (100,000
	// checks: two map lookups and two strings per comparison were seconds).
	type place struct {
		check   Check
		running bool
		name    string
	}
	places := make([]place, len(order))
	for i, c := range order {
		_, running := m.runners[c]
		places[i] = place{c, running, c.String()}
	}
	slices.SortFunc(places, func(a, b place) int {
		switch {
		case a.running && !b.running:
			return -1
		case b.running && !a.running:
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	for i, p := range places {
		order[i] = p.check
	}
	return order
}

// stopIdleLoop ends the probe loop once no check uses it; m.mu is held.
func (m *Monitor) stopIdleLoop() {
	if m.loop == nil {
		return
	}
	for _, r := range m.runners {
		if r.looped {
			return
		}
	}
	m.loop.shutdown()
	m.loop = nil
}

// stopRunner stops a check; m.mu is held.
func (m *Monitor) stopRunner(r *runner) {
	r.removed = true
	delete(m.news, r)
	if r.idle {
		return
	}
	if r.looped {
		m.loop.send(loopCommand{remove: r})
		return
	}
	r.cancel()
}

// State returns a check's state; ok is false for a check not running.
func (m *Monitor) State(c Check) (State, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.runners[c]
	if !ok {
		return State{}, false
	}
	return r.state, true
}

// Running is the number of checks running.
func (m *Monitor) Running() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.runners)
}

// Close stops every check and waits for them.
func (m *Monitor) Close() {
	m.mu.Lock()
	m.closed = true
	for c, r := range m.runners {
		m.stopRunner(r)
		delete(m.runners, c)
	}
	m.stopIdleLoop()
	m.mu.Unlock()
	m.wg.Wait()
}

func (m *Monitor) run(ctx context.Context, r *runner) {
	defer m.wg.Done()
	c := r.check
	// Spread the starts over the interval so that many checks do not fire together.
	first := time.NewTimer(rand.N(c.Interval))
	select {
	case <-ctx.Done():
		first.Stop()
		return
	case <-first.C:
	}
	tick := time.NewTicker(c.Interval)
	defer tick.Stop()
	for {
		start := time.Now()
		err := m.prober.Probe(ctx, c)
		if ctx.Err() != nil {
			return
		}
		m.finished(r, time.Since(start), err)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Report counts a result found outside the probes (passive health) for a
// running check exactly like a probe's: Fall of them in a row take it
// down. It returns false if the check is not running.
func (m *Monitor) Report(c Check, err error) bool {
	m.mu.Lock()
	r, ok := m.runners[c]
	m.mu.Unlock()
	if ok {
		m.record(r, err)
	}
	return ok
}

// finished takes one probe's result.
func (m *Monitor) finished(r *runner, took time.Duration, err error) {
	if m.observer != nil {
		m.observer.Probed(r.check, took, err)
	}
	m.record(r, err)
}

func (m *Monitor) record(r *runner, err error) {
	m.mu.Lock()
	if r.removed {
		m.mu.Unlock()
		return
	}
	c := r.check
	changed := false
	if err == nil {
		r.fails, r.state.LastError = 0, ""
		r.succ++
		if !r.state.Up && r.succ >= max(c.Rise, 1) {
			r.state = State{Up: true, Since: time.Now(), Transitioned: true}
			changed = true
		}
	} else {
		r.succ = 0
		r.fails++
		r.state.LastError = err.Error()
		if r.state.Up && r.fails >= max(c.Fall, 1) {
			r.state = State{Up: false, Since: time.Now(), LastError: err.Error(), Transitioned: true}
			changed = true
		}
	}
	settled := !r.state.Settled && r.state.Up == (err == nil)
	if settled || changed {
		r.state.Settled = true
		m.news[r] = struct{}{}
	}
	r.state.Checked = time.Now()
	if due := r.state.Checked.Add(3 * (c.Interval + c.Timeout)); due.After(m.staleAt) {
		m.staleAt, m.staleSince = due, r.state.Checked
	}
	m.mu.Unlock()
	if settled && !changed {
		m.notify() // the first result that confirms the initial state
	}
	if changed {
		m.log.Info("health check changed state", "check", c.String(), "up", err == nil, "error", errString(err))
		if m.observer != nil {
			m.observer.Transition(c, err == nil)
		}
		m.notify()
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

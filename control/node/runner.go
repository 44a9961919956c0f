package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/internal/lowprio"
	"github.com/merlin-ipvs/merlin/types"
)

// HealthMonitor runs health checks; *health.Monitor is one.
type HealthMonitor interface {
	Set(want map[health.Check]bool)
	State(c health.Check) (health.State, bool)
	Changes() <-chan struct{}
	// TakeChanged: the checks whose state changed since the last call.
	TakeChanged() []health.Check
	// Stale: when the monitor looks stuck without results, and the time
	// of the result that set it (zero: no result yet).
	Stale() (at, since time.Time)
}

// RunnerConfig configures a node runner; zero values take the defaults.
type RunnerConfig struct {
	Node    string
	Version string // of the binary, for node status
	// Warnings: this node's weakening settings, for node status.
	Warnings []string
	// ResyncPeriod between full reads of the kernel table, which repair
	// changes made behind merlin's back; default 30 s.
	ResyncPeriod time.Duration
	// OwnershipFile records which kernel services merlin created, so that
	// a restart still leaves every other service alone. Required.
	OwnershipFile string
	// CheckStateFile records what merlin decided of each health check, so
	// that a restart starts every check where it was ("": not kept).
	CheckStateFile string
	// Adopt: kernel services that merlin did not create but that match a
	// desired service with a VIP in these prefixes are taken over.
	Adopt []netip.Prefix
	// Deletion guard (GuardConfig); defaults 0.5 and 3.
	DeletionGuardFraction float64
	DeletionGuardMin      int
	// RetryBackoff is the first wait before retrying an object the kernel
	// refused; it doubles up to MaxRetryBackoff. Defaults 1 s and 60 s.
	RetryBackoff, MaxRetryBackoff time.Duration
	// ReportPeriod: how often sinks that report (Reporter) are asked
	// besides when they say something changed; default 5 s.
	ReportPeriod time.Duration
	// LinkBandwidthCapacity scales the link bandwidth this node announces
	// (1 Mbit/s per unit of healthy weight × it); default 1.
	LinkBandwidthCapacity float64
}

// MaxLinkBandwidthCapacity bounds a node's capacity factor.
const MaxLinkBandwidthCapacity = 1_000_000

// RunnerDeps are what a runner drives.
type RunnerDeps struct {
	IPVS    IPVS          // the kernel table; required
	Reader  IPVS          // background reads (a second socket); default IPVS
	Health  HealthMonitor // nil: no health checks
	Sinks   []Sink        // the other parts of the dataplane (VIP addresses, ...)
	WarmUp  WarmUp        // nil: none; holds the node back after its health results (connection sync)
	Metrics *NodeMetrics  // nil: unregistered
	Log     *slog.Logger
}

// Runner keeps one node's dataplane in step with the desired state. It
// owns time and goroutines: it takes the watcher's updates and the health
// monitor's changes, asks the planner (plan*.go) for the plan of what may
// have changed, hands IPVS and every other sink their part of it, retries
// failures with backoff, holds back mass deletions and publishes status.
// Passes are level-triggered: changes that arrive together coalesce, and a
// pass with nothing to change writes nothing. Kernel services merlin does
// not own are never touched.
type Runner struct {
	cfg     RunnerConfig
	guard   GuardConfig
	health  HealthMonitor
	warmUp  WarmUp
	log     *slog.Logger
	metrics *NodeMetrics
	ipvs    *ipvsSink
	sinks   []Sink
	// checkStates is owned by Run (the passes).
	checkStates *checkStates

	mu       sync.Mutex
	desired  *store.State  // written by Run under mu; nil until the first update
	incoming *store.Update // offered, not yet taken by Run (merged)
	wake     chan struct{}
	status   *types.NodeStatus
	changed  chan struct{} // closed and replaced when status changes

	pass passState // owned by Run
}

// NewRunner returns a runner; it starts nothing.
func NewRunner(cfg RunnerConfig, deps RunnerDeps) (*Runner, error) {
	if deps.IPVS == nil {
		return nil, errors.New("runner: an IPVS table is required")
	}
	if cfg.OwnershipFile == "" {
		return nil, errors.New("runner: an ownership file is required")
	}
	cfg.ResyncPeriod = orDuration(cfg.ResyncPeriod, 30*time.Second)
	cfg.RetryBackoff = orDuration(cfg.RetryBackoff, time.Second)
	cfg.ReportPeriod = orDuration(cfg.ReportPeriod, 5*time.Second)
	cfg.MaxRetryBackoff = orDuration(cfg.MaxRetryBackoff, time.Minute)
	switch c := cfg.LinkBandwidthCapacity; {
	case c == 0:
		cfg.LinkBandwidthCapacity = 1
	case c < 0 || math.IsNaN(c) || math.IsInf(c, 0) || c > MaxLinkBandwidthCapacity:
		return nil, fmt.Errorf("runner: link bandwidth capacity %v: want above 0, at most %d", c, MaxLinkBandwidthCapacity)
	}
	guard := GuardConfig{Fraction: cfg.DeletionGuardFraction, Min: cfg.DeletionGuardMin}
	if guard.Fraction == 0 {
		guard.Fraction = 0.5
	}
	if guard.Min == 0 {
		guard.Min = 3
	}
	owned, err := loadOwnership(cfg.OwnershipFile)
	if err != nil {
		return nil, err
	}
	checks, err := loadCheckStates(cfg.CheckStateFile)
	if err != nil {
		return nil, err
	}
	if deps.Metrics == nil {
		deps.Metrics = NewNodeMetrics(nil)
	}
	sink := newIPVSSink(deps.IPVS, owned, cfg.Adopt)
	if deps.Reader != nil {
		sink.reader = deps.Reader
	}
	r := &Runner{
		cfg: cfg, guard: guard, health: deps.Health, warmUp: deps.WarmUp, log: deps.Log, metrics: deps.Metrics, ipvs: sink, sinks: deps.Sinks, checkStates: checks,
		wake:    make(chan struct{}, 1),
		status:  &types.NodeStatus{Node: cfg.Node, Version: cfg.Version, Warnings: cfg.Warnings, Started: timestamppb.Now(), LastResult: "waiting for the desired state"},
		changed: make(chan struct{}),
		pass:    newPassState(cfg, len(deps.Sinks)),
	}
	r.pass.report = nodeReport{m: r.metrics, log: r.log}
	r.metrics.declareSinks(append([]string{"ipvs"}, sinkNames(deps.Sinks)...))
	return r, nil
}

func orDuration(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Offer hands the runner an update of the desired state (the watcher's
// Run calls it); updates not yet taken merge.
func (r *Runner) Offer(u *store.Update) {
	r.mu.Lock()
	switch in := r.incoming; {
	case in == nil || u.Full:
		if in != nil && !in.Received.IsZero() && (u.Received.IsZero() || in.Received.Before(u.Received)) {
			u.Received = in.Received // the earliest change decides how long it waited
		}
		r.incoming = u
	default:
		in.Revision, in.Invalid, in.ConfirmedDeletions, in.Drains, in.BGP = u.Revision, u.Invalid, u.ConfirmedDeletions, u.Drains, u.BGP
		if in.Received.IsZero() {
			in.Received = u.Received // the earliest change decides how long it waited
		}
		for id, ss := range u.Services {
			if in.Full && ss == nil {
				delete(in.Services, id)
			} else {
				in.Services[id] = ss
			}
		}
	}
	r.mu.Unlock()
	r.poke()
}

func (r *Runner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Desired is a copy of the desired state the runner works on (nil before
// the first update).
func (r *Runner) Desired() *store.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.desired == nil {
		return nil
	}
	return r.desired.Clone()
}

// takeUpdate applies the offered update to the runner's desired state and
// returns it with the IDs of the services that changed (nil: all) and when
// the change arrived from etcd (zero: no update).
func (r *Runner) takeUpdate() (*store.State, map[string]bool, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.incoming
	r.incoming = nil
	if u == nil {
		return r.desired, map[string]bool{}, time.Time{}
	}
	if r.desired == nil {
		r.desired = &store.State{}
	}
	return r.desired, r.desired.Apply(u), u.Received
}

// WriteMetrics writes the node's per-server families outside the registry
// (merlin_server_up), for MetricsHandler.
func (r *Runner) WriteMetrics(ctx context.Context, w io.Writer) error {
	return r.metrics.WriteMetrics(ctx, w)
}

// Status returns a copy of the node's status and a channel closed at its
// next change.
func (r *Runner) Status() (*types.NodeStatus, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return proto.Clone(r.status).(*types.NodeStatus), r.changed
}

// setStatus changes the status through fn and wakes the watchers if that
// changed anything.
func (r *Runner) setStatus(fn func(st *types.NodeStatus)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	before := proto.Clone(r.status).(*types.NodeStatus)
	fn(r.status)
	fitStatus(r.status)
	if !proto.Equal(before, r.status) {
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

// passStatus is setStatus for what a pass puts into the status, with no
// copy of it (up to 1,000 entries a list) to compare with on every pass:
// the pass's result comes last (end), and as its time always moves, the
// status changed.
func (r *Runner) passStatus(fn func(st *types.NodeStatus), end bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(r.status)
	fitStatus(r.status)
	if end {
		close(r.changed)
		r.changed = make(chan struct{})
	}
}

// Run reconciles until ctx ends and returns once every goroutine it
// started has stopped. It never changes the dataplane before the first
// desired state arrives, and leaves it as it is on return.
func (r *Runner) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	resync := time.NewTicker(r.cfg.ResyncPeriod)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	var healthChanges, warmAgain <-chan struct{}
	if r.health != nil {
		healthChanges = r.health.Changes()
	}
	if r.warmUp != nil {
		warmAgain = r.warmUp.Rearmed()
	}
	for _, s := range r.sinks {
		if rep, ok := s.(Reporter); ok {
			wg.Go(func() { r.runReporter(ctx, s.Name(), rep) })
		}
	}
	driftDone := make(chan driftResult, 1) // at most one read in flight
	drifting := false
	for {
		full, cause := false, "repair" // a wake without an update: a kernel object to put back
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.wake:
		case <-resync.C:
			cause = "resync"
			// The first read is synchronous; later ones run beside the
			// event passes so that a large table does not delay them.
			if !r.ipvs.valid {
				full = true
				break
			}
			if !drifting {
				drifting = true
				read := r.ipvs.DriftCheck()
				wg.Go(func() {
					var res driftResult
					lowprio.Run(backgroundNice, func() { res = read(ctx) })
					driftDone <- res
				})
			}
			continue
		case res := <-driftDone:
			drifting = false
			r.takeDrift(res)
			cause = "resync"
		case <-retry.C:
			cause = "retry"
		case <-healthChanges:
			r.pass.healthDirty = true
			r.takeHealthNews()
			cause = "health"
		case <-warmAgain:
			r.pass.ready = false // it announces nothing until warm again
			cause = "warm-up"
		}
		desired, changed, received := r.takeUpdate()
		if desired == nil {
			continue // static stability: nothing is known yet, so nothing changes
		}
		if !received.IsZero() {
			cause = "update"
		}
		r.metrics.passCauses.WithLabelValues(cause).Inc()
		if next := r.runPass(ctx, desired, changed, full, received); !next.IsZero() {
			retry.Reset(max(time.Until(next), 10*time.Millisecond))
		}
	}
}

// runReporter keeps one sink's report in node status until ctx ends.
func (r *Runner) runReporter(ctx context.Context, name string, rep Reporter) {
	tick := time.NewTicker(r.cfg.ReportPeriod)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		fill, err := rep.Report(rctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Warn("sink status", "sink", name, "error", err)
		case fill != nil:
			r.setStatus(fill)
		}
		select {
		case <-ctx.Done():
			return
		case <-rep.Changed():
		case <-tick.C:
		}
	}
}

// takeDrift puts what a background read found into the model; the pass
// that follows repairs it.
func (r *Runner) takeDrift(res driftResult) {
	if res.err != nil {
		r.log.Warn("resync: read the kernel IPVS table", "error", res.err)
		return
	}
	keys, ok := r.ipvs.Repair(res)
	if !ok {
		return
	}
	r.pass.driftKeys = append(r.pass.driftKeys, keys...)
	if len(keys) > 0 {
		r.log.Info("resync found changes behind merlin's back; repairing", "services", len(keys))
	}
	r.metrics.resyncs.Inc()
}

// Kernel service keys of a desired state.
func desiredKeys(desired *store.State) map[ipvs.ServiceKey]bool {
	keys := make(map[ipvs.ServiceKey]bool, len(desired.Services))
	for _, ss := range desired.Services {
		keys[ServiceKeyOf(ss.Service)] = true
	}
	return keys
}

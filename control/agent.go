package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// IPVS is what the agent needs of a kernel IPVS table; *ipvs.Client has it.
type IPVS interface {
	Table(ctx context.Context) ([]ipvs.VirtualServer, error)
	Apply(ctx context.Context, ops []ipvs.Op) error
}

// HealthMonitor runs health checks; *health.Monitor is one.
type HealthMonitor interface {
	Set(want map[health.Check]bool)
	State(c health.Check) (health.State, bool)
	Changes() <-chan struct{}
}

// serverCheck is the health check of one server and what its result does.
type serverCheck struct {
	check     health.Check
	initialUp bool
	slowStart time.Duration
}

// VIPSink puts the VIPs a node serves on an interface (datapath/netif).
type VIPSink interface {
	SetVIPs(ctx context.Context, vips []netip.Addr) error
}

// AgentConfig configures a node agent; zero values take the defaults.
type AgentConfig struct {
	Node string
	// ResyncPeriod between full reads of the kernel table, which repair
	// changes made behind merlin's back; default 30 s.
	ResyncPeriod time.Duration
	// OwnershipFile records which kernel services merlin created, so that
	// a restart still leaves every other service alone. Required.
	OwnershipFile string
	// Adopt: kernel services that merlin did not create but that match a
	// desired service with a VIP in these prefixes are taken over.
	Adopt []netip.Prefix
	// A desired state that deletes more than DeletionGuardFraction of the
	// owned services, and at least DeletionGuardMin of them, at once is
	// held back until confirmed. Defaults 0.5 and 3; a negative fraction
	// turns the guard off.
	DeletionGuardFraction float64
	DeletionGuardMin      int
	// RetryBackoff is the first wait before retrying an object the kernel
	// refused; it doubles up to MaxRetryBackoff. Defaults 1 s and 60 s.
	RetryBackoff, MaxRetryBackoff time.Duration
}

// objectID names a desired object: a service, or one of its servers.
type objectID struct{ service, server string }

type failure struct {
	err      string
	attempts uint32
	next     time.Time
}

// Agent makes one node's kernel IPVS table match the desired state: each
// pass diffs desired against what merlin owns in the kernel and applies
// the difference in one batch. Passes are level-triggered: changes that
// arrive together coalesce, and a pass with nothing to change writes
// nothing. Kernel services merlin does not own are never touched.
type Agent struct {
	cfg     AgentConfig
	ipvs    IPVS
	vips    VIPSink
	health  HealthMonitor
	log     *slog.Logger
	metrics *AgentMetrics

	mu       sync.Mutex
	desired  *State  // written by Run under mu; nil until the first update
	incoming *Update // offered, not yet taken by Run (merged)
	wake     chan struct{}
	status   *types.NodeStatus
	changed  chan struct{} // closed and replaced when status changes

	// Owned by Run.
	owned       *ownership
	model       map[ipvs.ServiceKey]*ipvs.VirtualServer // owned kernel services as last read or written
	foreign     map[ipvs.ServiceKey]bool                // kernel services merlin leaves alone
	modelValid  bool
	converted   map[string]convertedService
	idByKey     map[ipvs.ServiceKey]string // of converted services
	failures    map[objectID]*failure
	lastVIPs    []netip.Addr
	vipsDirty   bool // the set of desired VIPs may have changed
	guardRev    int64
	checks      map[string]map[string]serverCheck // service ID → server IP:PORT → check
	checksDirty bool
	healthDirty atomic.Bool
	ramping     map[string]bool // services with a server in slow start
	rampNext    time.Time
	lastDown    map[string]bool // services whose servers are all down, as last reported
	// Periodic resyncs read the kernel in the background (see startDriftCheck).
	driftKeys  []ipvs.ServiceKey          // to diff in the next pass
	writeGen   uint64                     // counts applies
	readGen    uint64                     // counts synchronous full reads
	touched    map[ipvs.ServiceKey]uint64 // writeGen of the last write to each key
	drifting   bool
	driftDone  chan driftResult
	resyncIPVS IPVS // reads for background resyncs; its own socket, so applies need not wait
}

// driftResult is what a background kernel read found: owned services
// whose kernel state differs from the model (nil: gone from the kernel).
type driftResult struct {
	writeGen, readGen uint64
	drift             map[ipvs.ServiceKey]*ipvs.VirtualServer
	foreign           map[ipvs.ServiceKey]bool
	err               error
}

type convertedService struct {
	state *ServiceState
	vs    ipvs.VirtualServer
	err   error
}

// NewAgent returns an agent for one IPVS table. vips and checks may be nil.
func NewAgent(cfg AgentConfig, table IPVS, vips VIPSink, checks HealthMonitor, metrics *AgentMetrics, log *slog.Logger) (*Agent, error) {
	if cfg.ResyncPeriod == 0 {
		cfg.ResyncPeriod = 30 * time.Second
	}
	if cfg.DeletionGuardFraction == 0 {
		cfg.DeletionGuardFraction = 0.5
	}
	if cfg.DeletionGuardMin == 0 {
		cfg.DeletionGuardMin = 3
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = time.Second
	}
	if cfg.MaxRetryBackoff == 0 {
		cfg.MaxRetryBackoff = time.Minute
	}
	if cfg.OwnershipFile == "" {
		return nil, errors.New("agent: an ownership file is required")
	}
	owned, err := loadOwnership(cfg.OwnershipFile)
	if err != nil {
		return nil, err
	}
	if metrics == nil {
		metrics = NewAgentMetrics(nil)
	}
	return &Agent{
		cfg: cfg, ipvs: table, vips: vips, health: checks, log: log, metrics: metrics,
		checks: map[string]map[string]serverCheck{}, ramping: map[string]bool{}, lastDown: map[string]bool{},
		touched: map[ipvs.ServiceKey]uint64{}, driftDone: make(chan driftResult, 1),
		wake:      make(chan struct{}, 1),
		status:    &types.NodeStatus{Node: cfg.Node, Started: timestamppb.Now(), LastResult: "waiting for the desired state"},
		changed:   make(chan struct{}),
		owned:     owned,
		converted: map[string]convertedService{},
		idByKey:   map[ipvs.ServiceKey]string{},
		failures:  map[objectID]*failure{},
	}, nil
}

// ReadResyncsWith makes background resyncs read the kernel through t (a
// second client of the same table), so that event passes never wait for
// a long read of a large table.
func (a *Agent) ReadResyncsWith(t IPVS) { a.resyncIPVS = t }

// Offer hands the agent an update of the desired state (the watcher's
// Run calls it); updates not yet taken merge.
func (a *Agent) Offer(u *Update) {
	a.mu.Lock()
	switch in := a.incoming; {
	case in == nil || u.Full:
		a.incoming = u
	default:
		in.Revision, in.Invalid, in.ConfirmedDeletions = u.Revision, u.Invalid, u.ConfirmedDeletions
		for id, ss := range u.Services {
			if in.Full && ss == nil {
				delete(in.Services, id)
			} else {
				in.Services[id] = ss
			}
		}
	}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Desired is a copy of the desired state the agent works on (nil before
// the first update).
func (a *Agent) Desired() *State {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.desired == nil {
		return nil
	}
	return a.desired.Clone()
}

// takeUpdate applies the offered update to the agent's desired state and
// returns it with the IDs of the services that changed (nil: all).
func (a *Agent) takeUpdate() (*State, map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.incoming
	a.incoming = nil
	if u == nil {
		return a.desired, map[string]bool{}
	}
	if a.desired == nil {
		a.desired = &State{}
	}
	return a.desired, a.desired.Apply(u)
}

// Status returns a copy of the node's status and a channel closed at its
// next change.
func (a *Agent) Status() (*types.NodeStatus, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return proto.Clone(a.status).(*types.NodeStatus), a.changed
}

func (a *Agent) setStatus(fn func(st *types.NodeStatus)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	before := proto.Clone(a.status).(*types.NodeStatus)
	fn(a.status)
	if !proto.Equal(before, a.status) {
		close(a.changed)
		a.changed = make(chan struct{})
	}
}

// Run reconciles until ctx ends. It never changes the kernel before the
// first desired state arrives, and leaves the kernel as it is on return.
func (a *Agent) Run(ctx context.Context) error {
	resync := time.NewTicker(a.cfg.ResyncPeriod)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	var healthChanges <-chan struct{}
	if a.health != nil {
		healthChanges = a.health.Changes()
	}
	for {
		full := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.wake:
		case <-resync.C:
			// The first read is synchronous; later ones run beside the
			// event passes so that a large table does not delay them.
			if a.modelValid {
				a.startDriftCheck(ctx)
				continue
			}
			full = true
		case res := <-a.driftDone:
			a.drifting = false
			a.applyDrift(res)
		case <-retry.C:
		case <-healthChanges:
			a.healthDirty.Store(true)
		}
		desired, changed := a.takeUpdate()
		if desired == nil {
			continue // static stability: nothing is known yet, so nothing changes
		}
		next := a.pass(ctx, desired, changed, full)
		if !next.IsZero() {
			retry.Reset(max(time.Until(next), 10*time.Millisecond))
		}
	}
}

// pass runs one reconcile and returns when the next retry is due (zero:
// none). changed names the services that changed since the last pass
// (nil: any may have).
func (a *Agent) pass(ctx context.Context, desired *State, changed map[string]bool, full bool) time.Time {
	start := time.Now()
	kind := "event"
	if full || !a.modelValid {
		kind = "resync"
	}
	err := a.reconcile(ctx, desired, changed, kind == "resync")
	if err != nil {
		// The next pass reads the kernel and looks at everything again:
		// this one may have taken changes it did not apply.
		a.modelValid = false
	}
	a.metrics.reconcileDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	result := "ok"
	if err != nil {
		result = err.Error()
		a.metrics.reconcileErrors.Inc()
		a.log.Warn("reconcile failed", "error", err)
	}
	var next time.Time
	var objErrs []*types.ObjectError
	for id, f := range a.failures {
		if next.IsZero() || f.next.Before(next) {
			next = f.next
		}
		objErrs = append(objErrs, &types.ObjectError{ServiceId: id.service, Server: id.server, Error: f.err, Attempts: f.attempts, NextRetry: timestamppb.New(f.next)})
	}
	sort.Slice(objErrs, func(i, j int) bool {
		if objErrs[i].ServiceId != objErrs[j].ServiceId {
			return objErrs[i].ServiceId < objErrs[j].ServiceId
		}
		return objErrs[i].Server < objErrs[j].Server
	})
	a.metrics.objectErrors.Set(float64(len(objErrs)))
	a.metrics.ownedServices.Set(float64(a.owned.len()))
	a.metrics.desiredRevision.Set(float64(desired.Revision))
	a.metrics.invalidKeys.Set(float64(len(desired.Invalid)))
	a.setStatus(func(st *types.NodeStatus) {
		st.LastResult = result
		st.LastReconcile = timestamppb.New(start)
		st.Errors = objErrs
		st.OwnedServices = uint32(a.owned.len())
		if err == nil {
			st.AppliedRevision = desired.Revision
			a.metrics.appliedRevision.Set(float64(desired.Revision))
		}
	})
	if err != nil && next.IsZero() {
		next = time.Now().Add(a.cfg.RetryBackoff)
	}
	if len(a.ramping) > 0 && (next.IsZero() || a.rampNext.Before(next)) {
		next = a.rampNext
	}
	return next
}

func (a *Agent) reconcile(ctx context.Context, desired *State, changed map[string]bool, full bool) error {
	if full || !a.modelValid {
		if err := a.readKernel(ctx, desired); err != nil {
			return err
		}
	}
	// Look only at what may have changed: the services an update named
	// (every one after a list or on a resync), those in slow start, and
	// with health news every checked one. Services keep their pointers
	// while unchanged, so the rest cost nothing. The table's size must not
	// set the cost of one change.
	healthDirty := a.healthDirty.Swap(false)
	ramping := a.ramping
	a.ramping = map[string]bool{}
	look := changed
	if full || changed == nil {
		look = make(map[string]bool, len(desired.Services)+len(a.converted))
		for id := range desired.Services {
			look[id] = true
		}
		for id := range a.converted {
			look[id] = true
		}
		for id := range a.checks {
			look[id] = true
		}
	} else if len(ramping) > 0 || healthDirty {
		look = maps.Clone(changed)
		maps.Copy(look, ramping)
		if healthDirty {
			for id := range a.checks {
				look[id] = true
			}
		}
	}
	dirty := map[ipvs.ServiceKey]bool{}
	var reconvert []string
	now := time.Now()
	// The VIP set and the health report change only with these; both cost
	// a walk of every service, which event passes otherwise avoid.
	healthChanged := healthDirty || len(ramping) > 0
	for id := range look {
		ss := desired.Services[id]
		c, had := a.converted[id]
		if ss == nil {
			if had { // deleted
				a.vipsDirty, healthChanged = true, true
				if c.err == nil {
					dirty[c.vs.Service.Key] = true
					a.forgetKey(c.vs.Service.Key, id)
				}
				delete(a.converted, id)
				a.clearFailures(id)
			}
			if a.checks[id] != nil {
				delete(a.checks, id)
				a.checksDirty = true
			}
			continue
		}
		isNew := !had || c.state != ss
		if !isNew && !ramping[id] && !(healthDirty && a.checks[id] != nil) {
			continue
		}
		if isNew {
			a.updateChecks(id, ss)
			a.clearFailures(id)
		}
		reconvert = append(reconvert, id)
	}
	if a.checksDirty && a.health != nil {
		want := map[health.Check]bool{}
		for _, byServer := range a.checks {
			for _, sc := range byServer {
				want[sc.check] = want[sc.check] || sc.initialUp
			}
		}
		a.health.Set(want)
		a.checksDirty = false
	}
	for _, id := range reconvert {
		ss := desired.Services[id]
		old, had := a.converted[id]
		if had && old.err == nil {
			dirty[old.vs.Service.Key] = true
			a.forgetKey(old.vs.Service.Key, id)
		}
		vs, err := ToIPVS(ss, a.weightOf(id, now))
		a.converted[id] = convertedService{state: ss, vs: vs, err: err}
		if err == nil {
			dirty[vs.Service.Key] = true
			a.idByKey[vs.Service.Key] = id
		} else {
			a.fail(objectID{service: id}, err)
		}
		if !had || (old.err == nil) != (err == nil) || old.vs.Service.Key != vs.Service.Key {
			a.vipsDirty = true
		}
		if a.checks[id] != nil || a.lastDown[id] {
			healthChanged = true
		}
	}
	for id, f := range a.failures {
		if f.next.After(now) {
			continue
		}
		if c, ok := a.converted[id.service]; ok {
			if c.err == nil {
				dirty[c.vs.Service.Key] = true
			} else {
				a.fail(id, c.err) // still does not convert: report again, later
			}
		}
	}
	for _, k := range a.driftKeys {
		dirty[k] = true
	}
	a.driftKeys = nil
	if full || a.guardRev != 0 { // held deletions are looked at again every pass
		for k := range a.model {
			dirty[k] = true
		}
		for k := range a.idByKey {
			dirty[k] = true
		}
	}

	// Objects the kernel refused wait for their backoff, even on resync.
	for id, f := range a.failures {
		if f.next.After(now) {
			if c, ok := a.converted[id.service]; ok && c.err == nil {
				delete(dirty, c.vs.Service.Key)
			}
		}
	}

	var want, have []ipvs.VirtualServer
	for k := range dirty {
		if id, ok := a.idByKey[k]; ok {
			c := a.converted[id]
			switch {
			case !a.owned.has(k) && a.foreignHas(k):
				a.fail(objectID{service: id}, fmt.Errorf("the kernel has a service %s that merlin does not own; list its VIP under adopt to take it over", k))
			default:
				want = append(want, c.vs)
			}
		}
		if vs, ok := a.model[k]; ok {
			have = append(have, *vs)
		}
	}
	ops := ipvs.Diff(want, have)
	ops = a.guardDeletions(ops, desired)
	if a.vipsDirty {
		a.setVIPs(ctx)
	}
	if healthChanged || full {
		a.reportHealth(desired)
	}
	if len(ops) == 0 {
		return nil
	}
	for _, op := range ops {
		if op.Kind == ipvs.OpAddService {
			a.owned.add(op.Service.Key)
		}
	}
	if err := a.owned.save(); err != nil {
		return fmt.Errorf("record owned services before creating them: %w", err)
	}
	a.writeGen++
	for _, op := range ops {
		a.touched[op.Service.Key] = a.writeGen
	}
	applyErr := a.ipvs.Apply(ctx, ops)
	failed := map[int]error{}
	var be *ipvs.BatchError
	switch {
	case applyErr == nil:
	case errors.As(applyErr, &be):
		for _, f := range be.Failed {
			failed[f.Index] = f.Err
		}
	default:
		for i := range ops {
			failed[i] = applyErr
		}
	}
	for i, op := range ops {
		a.metrics.ops.WithLabelValues(opLabel(op.Kind)).Inc()
		id := objectID{service: a.idByKey[op.Service.Key]}
		if isDestinationOp(op.Kind) {
			id.server = netip.AddrPortFrom(op.Destination.Key.Address, op.Destination.Key.Port).String()
		}
		if err, bad := failed[i]; bad {
			a.metrics.opErrors.WithLabelValues(opLabel(op.Kind), errorLabel(err)).Inc()
			if errors.Is(err, ipvs.ErrOutcomeUnknown) || errors.Is(err, ipvs.ErrNotSent) {
				a.modelValid = false // read the kernel again before trusting the model
			}
			if id.service == "" {
				id.service = op.Service.Key.String() // deleting a service merlin owns but no longer desires
			}
			if op.Kind == ipvs.OpAddService && !errors.Is(err, ipvs.ErrOutcomeUnknown) {
				a.owned.remove(op.Service.Key) // not created: perhaps someone else's
			}
			a.fail(id, fmt.Errorf("%s: %w", op, err))
			continue
		}
		delete(a.failures, id)
		a.applyToModel(op)
	}
	if err := a.owned.save(); err != nil {
		return fmt.Errorf("record owned services: %w", err)
	}
	if applyErr != nil && be == nil {
		a.modelValid = false
		return fmt.Errorf("apply %d IPVS ops: %w", len(ops), applyErr)
	}
	if len(failed) > 0 {
		a.log.Warn("the kernel refused some IPVS ops; the rest applied", "failed", len(failed), "total", len(ops))
	}
	return nil
}

// forgetKey drops the kernel key of a service that no longer converts to it.
func (a *Agent) forgetKey(k ipvs.ServiceKey, id string) {
	if a.idByKey[k] == id {
		delete(a.idByKey, k)
	}
}

// readKernel reads the whole table: the owned part becomes the model;
// services matching desired VIPs under Adopt become owned.
func (a *Agent) readKernel(ctx context.Context, desired *State) error {
	table, err := a.ipvs.Table(ctx)
	if err != nil {
		a.modelValid = false
		return fmt.Errorf("read the kernel IPVS table: %w", err)
	}
	desiredKeys := map[ipvs.ServiceKey]bool{}
	for _, ss := range desired.Services {
		desiredKeys[ServiceKeyOf(ss.Service)] = true
	}
	a.model = map[ipvs.ServiceKey]*ipvs.VirtualServer{}
	a.foreign = map[ipvs.ServiceKey]bool{}
	present := map[ipvs.ServiceKey]bool{}
	for i := range table {
		vs := &table[i]
		k := vs.Service.Key.Canonical()
		present[k] = true
		if !a.owned.has(k) && desiredKeys[k] && a.adoptable(k) {
			a.log.Info("adopting kernel service", "service", k)
			a.owned.add(k)
		}
		if a.owned.has(k) {
			a.model[k] = vs
		} else {
			a.foreign[k] = true
		}
	}
	// Owned services that vanished behind merlin's back stay owned: the
	// diff recreates those still desired. Those not desired are forgotten.
	for _, k := range a.owned.list() {
		if !present[k] && !desiredKeys[k] {
			a.owned.remove(k)
		}
	}
	a.modelValid = true
	a.readGen++
	return a.owned.save()
}

// startDriftCheck reads the kernel table in the background and compares
// the owned part with a snapshot of the model; applyDrift takes the result.
func (a *Agent) startDriftCheck(ctx context.Context) {
	if a.drifting {
		return
	}
	a.drifting = true
	model := maps.Clone(a.model) // values are replaced, never modified: see applyToModel
	owned := maps.Clone(a.owned.keys)
	writeGen, readGen := a.writeGen, a.readGen
	table := a.ipvs
	if a.resyncIPVS != nil {
		table = a.resyncIPVS
	}
	go func() {
		res := driftResult{writeGen: writeGen, readGen: readGen}
		defer func() { a.driftDone <- res }()
		t, err := table.Table(ctx)
		if err != nil {
			res.err = err
			return
		}
		read := map[ipvs.ServiceKey]*ipvs.VirtualServer{}
		res.foreign = map[ipvs.ServiceKey]bool{}
		for i := range t {
			k := t[i].Service.Key.Canonical()
			if owned[k] {
				read[k] = &t[i]
			} else {
				res.foreign[k] = true
			}
		}
		res.drift = map[ipvs.ServiceKey]*ipvs.VirtualServer{}
		n := 0
		for k, m := range model {
			if n++; n%256 == 0 {
				runtime.Gosched() // background work: event passes go first
			}
			r, ok := read[k]
			switch {
			case !ok:
				res.drift[k] = nil
			case len(ipvs.Diff([]ipvs.VirtualServer{*m}, []ipvs.VirtualServer{*r})) > 0:
				res.drift[k] = r
			}
		}
		for k, r := range read {
			if _, ok := model[k]; !ok {
				res.drift[k] = r
			}
		}
	}()
}

// applyDrift puts what a background read found into the model, except for
// keys written since the read began, and runs a pass that repairs it.
func (a *Agent) applyDrift(res driftResult) {
	if res.err != nil {
		a.log.Warn("resync: read the kernel IPVS table", "error", res.err)
		return
	}
	if res.readGen != a.readGen || !a.modelValid {
		return // a synchronous read replaced the model meanwhile
	}
	a.foreign = res.foreign
	a.driftKeys = nil
	for k, vs := range res.drift {
		if a.touched[k] > res.writeGen {
			continue
		}
		if vs == nil {
			delete(a.model, k)
		} else {
			a.model[k] = vs
		}
		a.driftKeys = append(a.driftKeys, k)
	}
	clear(a.touched)
	if len(a.driftKeys) > 0 {
		a.log.Info("resync found changes behind merlin's back; repairing", "services", len(a.driftKeys))
	}
	a.metrics.resyncs.Inc()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *Agent) foreignHas(k ipvs.ServiceKey) bool { return a.foreign[k] }

func (a *Agent) adoptable(k ipvs.ServiceKey) bool {
	if k.FWMark != 0 {
		return false
	}
	for _, p := range a.cfg.Adopt {
		if p.Contains(k.Address) {
			return true
		}
	}
	return false
}

// guardDeletions holds back service deletions when too many go at once.
func (a *Agent) guardDeletions(ops []ipvs.Op, desired *State) []ipvs.Op {
	deletions := 0
	for _, op := range ops {
		if op.Kind == ipvs.OpDeleteService {
			deletions++
		}
	}
	owned := a.owned.len()
	limit := max(a.cfg.DeletionGuardMin, int(a.cfg.DeletionGuardFraction*float64(owned)))
	held := a.cfg.DeletionGuardFraction >= 0 && deletions > limit
	if held && a.guardRev == 0 {
		a.guardRev = desired.Revision
	}
	if held && desired.ConfirmedDeletions >= a.guardRev {
		a.log.Info("mass deletion confirmed", "deletions", deletions, "revision", a.guardRev)
		held = false
	}
	if !held {
		a.guardRev = 0
		a.metrics.guardHeld.Set(0)
		a.setStatus(func(st *types.NodeStatus) { st.DeletionGuard = nil })
		return ops
	}
	a.metrics.guardHeld.Set(1)
	a.log.Warn("holding back a mass deletion until confirmed (meradm confirm-deletions)", "deletions", deletions, "owned", owned, "revision", a.guardRev)
	rev := a.guardRev
	a.setStatus(func(st *types.NodeStatus) {
		st.DeletionGuard = &types.DeletionGuard{Held: true, Deletions: uint32(deletions), Owned: uint32(owned), Revision: rev}
	})
	kept := ops[:0:0]
	for _, op := range ops {
		if op.Kind != ipvs.OpDeleteService {
			kept = append(kept, op)
		}
	}
	return kept
}

func (a *Agent) setVIPs(ctx context.Context) {
	if a.vips == nil {
		return
	}
	set := map[netip.Addr]bool{}
	for _, c := range a.converted {
		if c.err == nil && c.vs.Service.Key.FWMark == 0 {
			set[c.vs.Service.Key.Address] = true
		}
	}
	vips := slices.SortedFunc(maps.Keys(set), netip.Addr.Compare)
	if slices.Equal(vips, a.lastVIPs) {
		a.vipsDirty = false
		return
	}
	if err := a.vips.SetVIPs(ctx, vips); err != nil {
		a.log.Warn("set VIP addresses", "error", err) // vipsDirty stays: retried next pass
		return
	}
	a.lastVIPs, a.vipsDirty = vips, false
}

func (a *Agent) fail(id objectID, err error) {
	f := a.failures[id]
	if f == nil {
		f = &failure{}
		a.failures[id] = f
		a.log.Warn("object not applied", "service", id.service, "server", id.server, "error", err)
	}
	f.err = err.Error()
	f.attempts++
	backoff := a.cfg.RetryBackoff << min(f.attempts-1, 16)
	f.next = time.Now().Add(min(backoff, a.cfg.MaxRetryBackoff))
}

func (a *Agent) clearFailures(serviceID string) {
	for id := range a.failures {
		if id.service == serviceID {
			delete(a.failures, id)
		}
	}
}

// applyToModel records a successful op. Model entries are replaced, never
// modified, so that a background resync can hold a cheap snapshot.
func (a *Agent) applyToModel(op ipvs.Op) {
	k := op.Service.Key
	switch op.Kind {
	case ipvs.OpAddService:
		a.model[k] = &ipvs.VirtualServer{Service: op.Service}
	case ipvs.OpUpdateService:
		if vs := a.model[k]; vs != nil {
			c := *vs
			c.Service.Config = op.Service.Config
			a.model[k] = &c
		}
	case ipvs.OpDeleteService:
		delete(a.model, k)
		a.owned.remove(k)
	case ipvs.OpAddDestination, ipvs.OpUpdateDestination, ipvs.OpDeleteDestination:
		vs := a.model[k]
		if vs == nil {
			return
		}
		c := *vs
		c.Destinations = slices.Clone(vs.Destinations)
		i := slices.IndexFunc(c.Destinations, func(d ipvs.Destination) bool { return d.Key == op.Destination.Key })
		switch {
		case op.Kind == ipvs.OpDeleteDestination && i >= 0:
			c.Destinations = slices.Delete(c.Destinations, i, i+1)
		case op.Kind != ipvs.OpDeleteDestination && i >= 0:
			c.Destinations[i] = op.Destination
		case op.Kind != ipvs.OpDeleteDestination:
			c.Destinations = append(c.Destinations, op.Destination)
		}
		a.model[k] = &c
	}
}

func isDestinationOp(k ipvs.OpKind) bool {
	return k == ipvs.OpAddDestination || k == ipvs.OpUpdateDestination || k == ipvs.OpDeleteDestination
}

// updateChecks records the health checks of a service's servers.
func (a *Agent) updateChecks(id string, ss *ServiceState) {
	if a.health == nil {
		return
	}
	byServer := map[string]serverCheck{}
	for key, srv := range ss.Servers {
		c, ok, err := HealthCheckOf(srv, ss.Service)
		if err != nil {
			a.fail(objectID{service: id, server: key}, err)
			continue
		}
		if !ok {
			continue
		}
		h := model.EffectiveHealthCheck(srv, ss.Service)
		byServer[key] = serverCheck{check: c, initialUp: a.initialUp(ss, srv, h), slowStart: h.GetSlowStart().AsDuration()}
	}
	old := a.checks[id]
	if len(byServer) == 0 {
		if old != nil {
			delete(a.checks, id)
			a.checksDirty = true
		}
		return
	}
	if !maps.Equal(old, byServer) {
		a.checks[id] = byServer
		a.checksDirty = true
	}
}

// initialUp is the state a new check starts in: down with startup DOWN;
// otherwise up unless the kernel has the server at weight 0 while its
// configured weight is not (merlin took it down before a restart).
func (a *Agent) initialUp(ss *ServiceState, srv *types.RealServer, h *types.RealServer_HealthCheck) bool {
	if h.GetStartup() == types.RealServer_DOWN {
		return false
	}
	if srv.GetConfig().GetWeight().GetValue() == 0 {
		return true
	}
	vs := a.model[ServiceKeyOf(ss.Service)]
	if vs == nil {
		return true
	}
	addr, _ := netip.ParseAddr(srv.GetKey().GetIp())
	for _, d := range vs.Destinations {
		if d.Key.Address == addr && d.Key.Port == uint16(srv.GetKey().GetPort()) {
			return d.Config.Weight > 0
		}
	}
	return true
}

// weightOf gives each server its weight: 0 while its check is down, a
// ramp during slow start, the configured weight otherwise.
func (a *Agent) weightOf(id string, now time.Time) func(*types.RealServer) uint32 {
	byServer := a.checks[id]
	return func(srv *types.RealServer) uint32 {
		w := srv.GetConfig().GetWeight().GetValue()
		sc, ok := byServer[model.ServerKeyString(srv.GetKey())]
		if !ok || w == 0 {
			return w
		}
		st, known := a.health.State(sc.check)
		if !known {
			if sc.initialUp {
				return w
			}
			return 0
		}
		if !st.Up {
			return 0
		}
		if sc.slowStart > 0 && st.Transitioned {
			if elapsed := now.Sub(st.Since); elapsed < sc.slowStart {
				step := min(time.Second, sc.slowStart/5)
				if len(a.ramping) == 0 || now.Add(step).Before(a.rampNext) {
					a.rampNext = now.Add(step)
				}
				a.ramping[id] = true
				return max(1, uint32(uint64(w)*uint64(elapsed)/uint64(sc.slowStart)))
			}
		}
		return w
	}
}

// reportHealth puts every checked server's state into the node status and
// metrics, and reports services whose servers are all down.
func (a *Agent) reportHealth(desired *State) {
	if a.health == nil {
		return
	}
	var servers []*types.ServerHealth
	var down []string
	for _, id := range slices.Sorted(maps.Keys(a.checks)) {
		byServer := a.checks[id]
		ss := desired.Services[id]
		conv := a.converted[id]
		weights := map[string]uint32{}
		for _, d := range conv.vs.Destinations {
			weights[netip.AddrPortFrom(d.Key.Address, d.Key.Port).String()] = d.Config.Weight
		}
		allDown := ss != nil && len(ss.Servers) > 0
		for key := range ss.Servers {
			sc, ok := byServer[key]
			st, known := health.State{}, false
			if ok {
				st, known = a.health.State(sc.check)
			}
			up := !ok || (known && st.Up) || (!known && sc.initialUp)
			if up {
				allDown = false
			}
			if !ok {
				continue
			}
			sh := &types.ServerHealth{ServiceId: id, Server: key, Up: up, LastError: st.LastError, EffectiveWeight: weights[key]}
			if known {
				sh.Since = timestamppb.New(st.Since)
			}
			servers = append(servers, sh)
			a.metrics.serverUp.WithLabelValues(id, key).Set(b2f(up))
		}
		if allDown {
			down = append(down, id)
		}
	}
	for _, id := range down {
		if !a.lastDown[id] {
			a.log.Warn("every server of the service is down", "service", id)
		}
	}
	for id := range a.lastDown {
		if !slices.Contains(down, id) {
			a.log.Info("the service has a server up again", "service", id)
			a.metrics.serviceDown.DeleteLabelValues(id)
		}
	}
	a.lastDown = map[string]bool{}
	for _, id := range down {
		a.lastDown[id] = true
		a.metrics.serviceDown.WithLabelValues(id).Set(1)
	}
	a.setStatus(func(st *types.NodeStatus) { st.Servers, st.ServicesDown = servers, down })
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

package node

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/types"
)

// passState is what the runner carries from one pass to the next; only
// Run's goroutine touches it.
type passState struct {
	plans        map[string]*ServicePlan    // by service ID
	checks       map[string]ServiceChecks   // by service ID, services with checks only
	idByKey      map[ipvs.ServiceKey]string // of planned services that convert
	initial      map[health.Check]bool      // what the monitor was last given
	checkTargets claimants[netip.AddrPort]  // services whose checks probe each target
	healthLook   map[string]bool            // services whose checks changed state since the last pass
	// The checks that changed state since the last pass (all of them:
	// more than there are checks).
	healthNews    []health.Check
	healthNewsAll bool
	ramping       map[string]time.Time      // services in slow start → next weight change
	thresholds    map[string]thresholdState // services with a healthy threshold that went below or back
	failures      *failures                 // objects this node could not program
	sinkFail      *failures                 // sinks whose last Set failed (objectID.service is the name)
	guardRev      int64                     // revision a mass deletion is held at (0: none)
	node          NodePlan
	nodeIn        NodeInputs   // what node was planned with
	ready         bool         // a pass completed with every check's first result in
	drain         *store.Drain // this node's, nil when not draining
	drainState    DrainState
	serverDrains  map[string]store.ServerDrain // as the sinks were last given
	drainEnds     time.Time                    // when a drain moves on (zero: not draining, or past it)
	stuckLook     time.Time                    // when the health results would be stale
	warmLook      time.Time                    // when to ask the warm-up again

	driftKeys                           []ipvs.ServiceKey // found by a background read; diffed next pass
	healthDirty, checksDirty, nodeDirty bool

	// Services whose plans changed since the sinks were last given a plan
	// after a change, and the sinks whose last Set took a plan (those get
	// only the changes next; the others every service).
	sinkChanged map[string]bool
	sinkInStep  map[string]bool
	// The VIP addresses of those services, before and after; all of them
	// when the node's own inputs changed.
	sinkVIPs    map[netip.Addr]bool
	sinkAllVIPs bool

	// The node plan, made a change at a time: the services whose plans
	// were replaced since the last one.
	planner     NodePlanner
	nodeChanged map[string]bool
	report      nodeReport
}

func newPassState(cfg RunnerConfig, sinks int) passState {
	return passState{
		plans: map[string]*ServicePlan{}, checks: map[string]ServiceChecks{}, idByKey: map[ipvs.ServiceKey]string{},
		checkTargets: newClaimants[netip.AddrPort](), healthLook: map[string]bool{},
		ramping: map[string]time.Time{}, thresholds: map[string]thresholdState{}, failures: newFailures(cfg.RetryBackoff, cfg.MaxRetryBackoff),
		sinkFail: newFailures(cfg.RetryBackoff, cfg.MaxRetryBackoff), nodeDirty: sinks > 0,
		sinkChanged: map[string]bool{}, sinkInStep: map[string]bool{}, sinkVIPs: map[netip.Addr]bool{}, nodeChanged: map[string]bool{},
	}
}

// runPass runs one reconcile, publishes the outcome and returns when the
// next pass is due without news (zero: not before news). received is when
// the change it takes arrived from etcd (zero: none).
func (r *Runner) runPass(ctx context.Context, desired *store.State, changed map[string]bool, full bool, received time.Time) time.Time {
	start := time.Now()
	kind := "event"
	if full || !r.ipvs.valid {
		kind = "resync"
	}
	err := r.reconcile(ctx, desired, changed, kind == "resync", start)
	if err != nil {
		// The next pass reads the kernel and looks at everything again:
		// this one may have taken changes it did not apply.
		r.ipvs.valid = false
		r.metrics.reconcileErrors.Inc()
		r.log.Warn("reconcile failed", "error", err)
	}
	r.metrics.reconcileDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	if err == nil && !received.IsZero() {
		r.metrics.changeApply.Observe(time.Since(received).Seconds())
	}
	r.publish(desired, start, err)
	return r.nextPass(err, start)
}

// nextPass is the earliest of: a failed object's retry, a failed sink's
// retry, a slow-start step, and after a failed pass the first backoff.
// Every one of them lies in the future: a due retry is retried or cleared
// by the pass that finds it due.
func (r *Runner) nextPass(err error, now time.Time) time.Time {
	next := earliest(earliest(r.pass.failures.next(), r.pass.sinkFail.next()), earliest(earliest(r.pass.drainEnds, r.pass.stuckLook), r.pass.warmLook))
	for _, t := range r.pass.ramping {
		next = earliest(next, t)
	}
	for _, s := range r.sinks {
		if t, ok := s.(Timed); ok {
			next = earliest(next, t.Due())
		}
	}
	if err != nil {
		next = earliest(next, now.Add(r.cfg.RetryBackoff))
	}
	return next
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

func (r *Runner) reconcile(ctx context.Context, desired *store.State, changed map[string]bool, full bool, now time.Time) error {
	if full {
		adopted, err := r.ipvs.Read(ctx, desiredKeys(desired))
		if err != nil {
			return err
		}
		for _, k := range adopted {
			r.log.Info("adopting kernel service", "service", k)
		}
	}
	dirty := r.replan(desired, r.lookAt(desired, changed, full, now), now)
	r.retryDue(dirty, now)
	for _, k := range r.pass.driftKeys {
		dirty[k] = true
	}
	r.pass.driftKeys = nil
	if full || r.pass.guardRev != 0 { // held deletions are looked at again every pass
		for k := range r.ipvs.model {
			dirty[k] = true
		}
		for k := range r.pass.idByKey {
			dirty[k] = true
		}
	}
	err := r.applyIPVS(ctx, desired, dirty, now)
	r.setSinks(ctx, desired, err == nil, now)
	return err
}

// lookAt is the services whose plan may have changed: those an update
// named (every one after a list or on a resync), those whose slow start
// steps now, and with health news every checked one. The rest keep their
// plans, so the table's size does not set the cost of one change.
func (r *Runner) lookAt(desired *store.State, changed map[string]bool, full bool, now time.Time) map[string]bool {
	look := changed
	if full || changed == nil {
		look = make(map[string]bool, len(desired.Services)+len(r.pass.plans))
		for id := range desired.Services {
			look[id] = true
		}
		for id := range r.pass.plans {
			look[id] = true
		}
		return look
	}
	extra := func(id string) {
		if !look[id] {
			if len(look) == len(changed) {
				look = cloneSet(changed)
			}
			look[id] = true
		}
	}
	for id, t := range r.pass.ramping {
		if !t.After(now) {
			extra(id)
		}
	}
	for id := range r.pass.healthLook {
		extra(id)
	}
	return look
}

func cloneSet(m map[string]bool) map[string]bool {
	c := make(map[string]bool, len(m)+1)
	for k, v := range m {
		c[k] = v
	}
	return c
}

// replan asks the planner again for the services in look and returns the
// kernel keys whose planned state may differ from the kernel's.
func (r *Runner) replan(desired *store.State, look map[string]bool, now time.Time) map[ipvs.ServiceKey]bool {
	healthDirty := r.pass.healthDirty
	r.pass.healthDirty = false
	dirty := map[ipvs.ServiceKey]bool{}
	var again []string
	for id := range look {
		ss, old := desired.Services[id], r.pass.plans[id]
		switch {
		case ss == nil:
			if old != nil {
				r.dropPlan(id, old, dirty)
			}
		case old == nil || old.State != ss:
			r.pass.failures.clearService(id)
			r.setChecks(id, ss, now)
			again = append(again, id)
		case r.pass.ramping[id] != (time.Time{}) && !r.pass.ramping[id].After(now),
			r.pass.healthLook[id] && len(r.pass.checks[id].Servers) > 0:
			again = append(again, id)
		}
	}
	clear(r.pass.healthLook)
	checksChanged := r.pass.checksDirty && r.health != nil
	if checksChanged {
		r.pass.initial = WantedChecks(r.pass.checks, r.checkStates.up)
		r.health.Set(r.pass.initial)
		r.pass.checksDirty = false
	}
	if (healthDirty || checksChanged) && r.health != nil {
		r.rememberChecks(checksChanged)
	}
	for _, id := range again {
		p := PlanService(id, desired.Services[id], r.pass.checks[id], r.healthView(r.pass.checks[id]), now)
		if st := applyThreshold(p, r.pass.thresholds[id], now); st != (thresholdState{}) {
			r.pass.thresholds[id] = st
		} else {
			delete(r.pass.thresholds, id)
		}
		r.setPlan(id, p, dirty, now)
	}
	return dirty
}

func (r *Runner) dropPlan(id string, old *ServicePlan, dirty map[ipvs.ServiceKey]bool) {
	if old.Err == nil {
		dirty[old.Key()] = true
		r.forgetKey(old.Key(), id)
	}
	delete(r.pass.plans, id)
	r.changedForSinks(id, old)
	delete(r.pass.ramping, id)
	delete(r.pass.thresholds, id)
	if old, ok := r.pass.checks[id]; ok {
		r.indexChecks(id, old, ServiceChecks{})
		delete(r.pass.checks, id)
		r.pass.checksDirty = true
	}
	r.pass.failures.clearService(id)
	r.pass.nodeDirty = true
}

// setChecks records the health checks of a changed service.
func (r *Runner) setChecks(id string, ss *store.ServiceState, now time.Time) {
	if r.health == nil {
		return
	}
	sc := PlanChecks(ss, r.ipvs.Kernel(ServiceKeyOf(ss.Service)))
	for server, err := range sc.Errors {
		r.fail(objectID{service: id, server: server}, err, now)
	}
	old, had := r.pass.checks[id]
	switch {
	case len(sc.Servers) == 0 && had:
		r.indexChecks(id, old, sc)
		delete(r.pass.checks, id)
		r.pass.checksDirty = true
	case len(sc.Servers) > 0 && !old.Equal(sc):
		r.indexChecks(id, old, sc)
		r.pass.checks[id] = sc
		r.pass.checksDirty = r.pass.checksDirty || !old.SameWanted(sc, r.checkStates.decided)
	}
}

func (r *Runner) healthView(sc ServiceChecks) HealthView {
	hv := HealthView{Initial: r.pass.initial}
	if len(sc.Servers) == 0 {
		return hv
	}
	hv.States = make(map[health.Check]health.State, len(sc.Servers))
	for _, c := range sc.Servers {
		if st, ok := r.health.State(c.Check); ok {
			hv.States[c.Check] = st
		}
	}
	return hv
}

// changedForSinks notes that service id's plan p (nil: none) is replaced
// or put in place: the node planner and the sinks look at it, and at its
// VIP, next.
func (r *Runner) changedForSinks(id string, p *ServicePlan) {
	r.pass.sinkChanged[id], r.pass.nodeChanged[id] = true, true
	if addr, ok := p.VIP(); ok {
		r.pass.sinkVIPs[addr] = true
	}
}

// setPlan puts a new plan of a service in place.
func (r *Runner) setPlan(id string, p *ServicePlan, dirty map[ipvs.ServiceKey]bool, now time.Time) {
	old := r.pass.plans[id]
	if old != nil && old.Err == nil {
		dirty[old.Key()] = true
		r.forgetKey(old.Key(), id)
	}
	r.pass.plans[id] = p
	r.changedForSinks(id, old)
	r.changedForSinks(id, p)
	if p.Err == nil {
		dirty[p.Key()] = true
		r.pass.idByKey[p.Key()] = id
	} else {
		r.fail(objectID{service: id}, p.Err, now)
	}
	if p.NextChange.IsZero() {
		delete(r.pass.ramping, id)
	} else {
		r.pass.ramping[id] = p.NextChange
	}
	bwDefault := r.pass.nodeIn.LinkBandwidth.Default
	if old == nil || nodeFacing(old, bwDefault) != nodeFacing(p, bwDefault) || len(p.Checks.Servers) > 0 || !sameServers(old, p) ||
		!proto.Equal(old.State.Service.GetAnnounce(), p.State.Service.GetAnnounce()) {
		r.pass.nodeDirty = true
	}
}

// nodeFacing is what of a service plan the node plan depends on, apart
// from server health (checked services always count as changed) and its
// announcement options: the weights only where they make the link
// bandwidth its VIP is announced with (bwDefault: the cluster's default).
type nodeFace struct {
	key             ipvs.ServiceKey
	ok, down, empty bool
	weight          uint64
}

func nodeFacing(p *ServicePlan, bwDefault bool) nodeFace {
	f := nodeFace{key: p.Key(), ok: p.Err == nil, down: p.AllDown, empty: len(p.Virtual.Destinations) == 0}
	if bw := p.State.Service.GetAnnounce().GetLinkBandwidth(); bw.GetValue() || (bw == nil && bwDefault) {
		f.weight = healthyWeight(p)
	}
	return f
}

// sameServers: the plans forward to the same servers the same way (what
// the traffic counters key on; weights do not matter).
func sameServers(a, b *ServicePlan) bool {
	return slices.EqualFunc(a.Virtual.Destinations, b.Virtual.Destinations, func(x, y ipvs.Destination) bool {
		return x.Key == y.Key && x.Config.Forward == y.Config.Forward && x.Config.TunnelType == y.Config.TunnelType
	})
}

// forgetKey drops the kernel key of a service that no longer converts to it.
func (r *Runner) forgetKey(k ipvs.ServiceKey, id string) {
	if r.pass.idByKey[k] == id {
		delete(r.pass.idByKey, k)
	}
}

func (r *Runner) fail(id objectID, err error, now time.Time) {
	if r.pass.failures.add(id, err, now) {
		r.log.Warn("object not applied", "service", id.service, "server", id.server, "error", err)
	}
}

// retryDue looks at each failure whose retry is due: one that no longer
// applies (its service is gone) is cleared, one the planner still refuses
// is reported again, the others have their keys diffed again.
func (r *Runner) retryDue(dirty map[ipvs.ServiceKey]bool, now time.Time) {
	for _, id := range r.pass.failures.due(now) {
		p := r.pass.plans[id.service]
		switch {
		case p == nil && id.orphan != (ipvs.ServiceKey{}):
			dirty[id.orphan] = true // an owned service no longer desired
		case p == nil:
			r.pass.failures.clear(id)
		case id.server == "" && p.Err != nil:
			r.fail(id, p.Err, now)
		case p.Checks.Errors[id.server] != nil:
			r.fail(id, p.Checks.Errors[id.server], now)
		case p.Err != nil:
			r.pass.failures.clear(id) // the service's own error says it
		default:
			dirty[p.Key()] = true
		}
	}
}

// publish puts the outcome of a pass into status and metrics.
func (r *Runner) publish(desired *store.State, start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = err.Error()
	}
	objErrs := r.pass.failures.report()
	owned := r.ipvs.owned.len()
	r.metrics.objectErrors.Set(float64(len(objErrs)))
	r.metrics.ownedServices.Set(float64(owned))
	r.metrics.desiredRevision.Set(float64(desired.Revision))
	r.metrics.invalidKeys.Set(float64(len(desired.Invalid)))
	r.metrics.setSink("ipvs", err)
	r.passStatus(func(st *types.NodeStatus) {
		st.LastResult = result
		st.LastReconcile = timestamppb.New(start)
		st.Errors = bounded(st, omittedErrors, objErrs)
		st.OwnedServices = uint32(owned)
		st.Sinks = r.sinkStatus(err)
		if err == nil {
			st.AppliedRevision = desired.Revision
			r.metrics.appliedRevision.Set(float64(desired.Revision))
		}
	}, true)
}

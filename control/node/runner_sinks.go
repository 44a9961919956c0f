package node

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/types"
)

// setSinks derives the node plan again when a service's share of it may
// have changed, and hands the plan to the sinks: all of them after a
// change, a failed one again when its retry is due. One sink's failure
// is recorded for it alone.
func (r *Runner) setSinks(ctx context.Context, desired *store.State, reconciled bool, now time.Time) {
	var drain *store.Drain
	if d, ok := desired.Drains[r.cfg.Node]; ok {
		drain = &d
	}
	ds := drainState(drain, now)
	r.pass.drain, r.pass.drainState, r.pass.drainEnds = drain, ds, ds.Next
	in := NodeInputs{NotReady: r.settleReadiness(ctx, reconciled, now), Failed: r.pass.failures.services(), Drain: ds.Phase,
		LinkBandwidth: LinkBandwidthInputs{Default: desired.BGP != nil && desired.BGP.Settings.GetLinkBandwidth(),
			PerWeight: MinLinkBandwidth * r.cfg.LinkBandwidthCapacity * ds.Share}}
	in.HealthStuck, r.pass.stuckLook = r.healthStuck(now)
	if in.NotReady != r.pass.nodeIn.NotReady || in.Drain != r.pass.nodeIn.Drain || in.HealthStuck != r.pass.nodeIn.HealthStuck ||
		in.LinkBandwidth != r.pass.nodeIn.LinkBandwidth || !maps.Equal(in.Failed, r.pass.nodeIn.Failed) {
		r.pass.nodeDirty, r.pass.sinkAllVIPs = true, true
	}
	changed := r.pass.nodeDirty || !maps.Equal(desired.ServerDrains, r.pass.serverDrains)
	r.pass.serverDrains = desired.ServerDrains
	if r.pass.nodeDirty {
		var ch NodeChange
		r.pass.node, ch = r.pass.planner.Plan(r.pass.plans, r.pass.nodeChanged, in)
		r.pass.nodeIn, r.pass.nodeChanged, r.pass.nodeDirty = in, map[string]bool{}, false
		r.reportNode(ch)
	}
	plan := &Plan{Revision: desired.Revision, Services: r.pass.plans, Node: r.pass.node, ServerDrains: desired.ServerDrains}
	for _, s := range r.sinks {
		id := objectID{service: s.Name()}
		_, failing := r.pass.sinkFail.byID[id]
		if !changed && (!failing || r.pass.sinkFail.waiting(id, now)) && !sinkDue(s, now) {
			continue
		}
		err := s.Set(ctx, r.sinkPlan(s.Name(), plan))
		r.metrics.setSink(s.Name(), err)
		r.pass.sinkInStep[s.Name()] = err == nil
		if err != nil {
			if r.pass.sinkFail.add(id, err, now) {
				r.log.Warn("sink failed; retrying with backoff", "sink", s.Name(), "error", err)
			}
			continue
		}
		if failing {
			r.log.Info("sink recovered", "sink", s.Name())
		}
		r.pass.sinkFail.clear(id)
	}
	if changed {
		// Every sink was given this plan (or, failing, gets all next).
		r.pass.sinkChanged, r.pass.sinkVIPs, r.pass.sinkAllVIPs = map[string]bool{}, map[netip.Addr]bool{}, false
	}
}

// sinkPlan is the plan for one sink: with the changes since the last plan
// it took, or none (look at all) for a sink not in step.
func (r *Runner) sinkPlan(name string, plan *Plan) *Plan {
	p := *plan
	if r.pass.sinkInStep[name] {
		p.Changed = r.pass.sinkChanged
		if !r.pass.sinkAllVIPs {
			p.ChangedVIPs = r.pass.sinkVIPs
		}
	}
	return &p
}

// sinkDue: a Timed sink whose time has come.
func sinkDue(s Sink, now time.Time) bool {
	t, ok := s.(Timed)
	return ok && !t.Due().IsZero() && !now.Before(t.Due())
}

// settleReadiness says why the node serves nothing yet: until a pass has
// completed with the first result of every check in, and the warm-up (if
// any) has ended, no VIP is served. Once ready, a node stays ready until
// the warm-up starts again (Rearmed: its sync link was down).
func (r *Runner) settleReadiness(ctx context.Context, reconciled bool, now time.Time) string {
	switch {
	case r.pass.ready:
		return ""
	case !reconciled:
		return "the first reconcile has not completed"
	}
	for c := range r.pass.initial {
		if st, ok := r.health.State(c); !ok || !st.Settled {
			return "waiting for the first health results"
		}
	}
	if r.warmUp != nil {
		reason, recheck := r.warmUp.WarmingUp(ctx, now)
		if r.pass.warmLook = recheck; reason != "" {
			return "connection sync warm-up: " + reason
		}
	}
	r.pass.ready = true
	return ""
}

// healthStuck says why the monitor seems stuck — no check has had a
// result for three of its rounds — and when to look again otherwise. The
// monitor keeps that time as results come, so a pass does not walk every
// check.
func (r *Runner) healthStuck(now time.Time) (string, time.Time) {
	if r.health == nil || !r.pass.ready {
		return "", time.Time{}
	}
	at, since := r.health.Stale()
	if at.IsZero() {
		return "", time.Time{} // nothing probed yet
	}
	if at = at.Add(5 * time.Second); now.Before(at) {
		return "", at
	}
	return fmt.Sprintf("no health check result for %s: the health monitor is stuck", now.Sub(since).Round(time.Second)), time.Time{}
}

// reportNode puts the node plan's health and VIP states into status and
// metrics, ch saying what the plan made anew.
func (r *Runner) reportNode(ch NodeChange) {
	np := r.pass.node
	r.pass.report.report(np, ch, r.pass.plans)
	r.metrics.bandwidthShare.Set(r.pass.drainState.Share)
	r.passStatus(func(st *types.NodeStatus) {
		r.pass.report.fillStatus(st, np)
		st.Drain = drainStatus(r.pass.drain, r.pass.drainState)
	}, false) // the pass's result wakes the watchers
}

// sinkStatus is each sink's state for node status; ipvsErr is the IPVS
// sink's outcome of this pass.
func (r *Runner) sinkStatus(ipvsErr error) []*types.SinkStatus {
	out := []*types.SinkStatus{{Name: "ipvs", Ok: ipvsErr == nil}}
	if ipvsErr != nil {
		out[0].Error = ipvsErr.Error()
	}
	for _, s := range r.sinks {
		st := &types.SinkStatus{Name: s.Name(), Ok: true}
		if f := r.pass.sinkFail.byID[objectID{service: s.Name()}]; f != nil {
			st.Ok, st.Error, st.NextRetry = false, f.err, timestamppb.New(f.next)
		}
		out = append(out, st)
	}
	return out
}

func sinkNames(sinks []Sink) []string {
	names := make([]string, len(sinks))
	for i, s := range sinks {
		names[i] = s.Name()
	}
	return names
}

func drainStatus(d *store.Drain, ds DrainState) *types.DrainStatus {
	if d == nil {
		return nil
	}
	out := &types.DrainStatus{Since: timestamppb.New(d.Since), WithdrawAfter: durationpb.New(d.WithdrawAfter), Withdrawn: ds.Phase == Drained,
		RampFraction: ds.Share, RampStep: uint32(ds.Step), RampSteps: uint32(ds.Steps)}
	if d.Ramp > 0 {
		out.Ramp = durationpb.New(d.Ramp)
	}
	return out
}

package node

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/types"
)

// The runner's side of the IPVS sink: which keys to diff, the batch, the
// deletion guard, and what each op's outcome does to the object errors.

// applyIPVS diffs the dirty keys against the kernel model and applies the
// difference in one batch; objects the kernel refused wait for their
// backoff, even on a resync.
func (r *Runner) applyIPVS(ctx context.Context, desired *store.State, dirty map[ipvs.ServiceKey]bool, now time.Time) error {
	want := make(map[ipvs.ServiceKey]*ipvs.VirtualServer, len(dirty))
	keys := make([]ipvs.ServiceKey, 0, len(dirty))
	for k := range dirty {
		id, planned := r.pass.idByKey[k]
		if r.pass.failures.waiting(objectID{service: id}, now) || (!planned && r.pass.failures.waiting(orphanID(k), now)) {
			r.clearIfMatched(k, id, planned)
			r.pass.failures.holdBehind(id, now)
			continue
		}
		if planned {
			if err := r.ipvs.Conflict(k); err != nil {
				r.fail(objectID{service: id}, err, now)
				r.pass.failures.holdBehind(id, now)
				continue
			}
			want[k] = &r.pass.plans[id].Virtual
		}
		keys = append(keys, k)
	}
	ops := r.ipvs.Diff(want, keys)
	ops = r.guardDeletions(ops, desired)
	var results []OpResult
	var err error
	if len(ops) > 0 {
		results, err = r.ipvs.Apply(ctx, ops)
	}
	r.clearMatched(keys, r.recordOps(results, now))
	if stale := r.ipvs.TakeStale(); len(stale) > 0 {
		// Removed behind merlin's back: the next pass puts it back.
		r.pass.driftKeys = append(r.pass.driftKeys, stale...)
		r.poke()
	}
	return err
}

// clearMatched clears the failures of objects at the diffed keys that
// needed no op: the kernel already holds what is desired for them.
func (r *Runner) clearMatched(diffed []ipvs.ServiceKey, touched map[objectID]bool) {
	if len(r.pass.failures.byID) == 0 {
		return
	}
	at := make(map[ipvs.ServiceKey]bool, len(diffed))
	for _, k := range diffed {
		at[k] = true
	}
	for id := range r.pass.failures.byID {
		if !touched[id] && at[r.keyOf(id)] && !r.plannerRefuses(id) {
			r.pass.failures.clear(id)
		}
	}
}

// keyOf is the kernel key an object error is about (zero: none).
func (r *Runner) keyOf(id objectID) ipvs.ServiceKey {
	if p := r.pass.plans[id.service]; p != nil && p.Err == nil {
		return p.Key()
	}
	return id.orphan
}

// plannerRefuses: the error is the planner's (the service or the server's
// check cannot be built), which no kernel state clears.
func (r *Runner) plannerRefuses(id objectID) bool {
	p := r.pass.plans[id.service]
	return p != nil && ((id.server == "" && p.Err != nil) || p.Checks.Errors[id.server] != nil)
}

// clearIfMatched clears the failures of a key waiting for its retry when
// the kernel already holds what is desired there (someone repaired it, or
// an op reported failed had applied after all): an error that no longer
// applies does not wait for its retry to go away.
func (r *Runner) clearIfMatched(k ipvs.ServiceKey, id string, planned bool) {
	if !planned {
		if r.ipvs.Kernel(k) == nil {
			r.pass.failures.clear(orphanID(k))
		}
		return
	}
	want := map[ipvs.ServiceKey]*ipvs.VirtualServer{k: &r.pass.plans[id].Virtual}
	if r.ipvs.Conflict(k) == nil && len(r.ipvs.Diff(want, []ipvs.ServiceKey{k})) == 0 {
		for fid := range r.pass.failures.byID {
			if fid.service == id && !r.plannerRefuses(fid) {
				r.pass.failures.clear(fid)
			}
		}
	}
}

// recordOps counts the ops, records failures and clears the objects
// that applied; it returns every object an op was about.
func (r *Runner) recordOps(results []OpResult, now time.Time) map[objectID]bool {
	touched := make(map[objectID]bool, len(results))
	failed := 0
	for _, res := range results {
		op := res.Op
		r.metrics.ops.WithLabelValues(opLabel(op.Kind)).Inc()
		id := r.objectOf(op)
		touched[id] = true
		if res.Err != nil {
			r.metrics.opErrors.WithLabelValues(opLabel(op.Kind), errorLabel(res.Err)).Inc()
		}
		switch {
		case res.Stale:
			r.log.Info("the kernel lost what merlin had written; putting it back", "op", op.String(), "error", res.Err)
			r.pass.failures.clear(id)
			continue
		case res.Err != nil:
			failed++
			r.fail(id, fmt.Errorf("%s: %w", op, res.Err), now)
			continue
		}
		if p := r.pass.plans[id.service]; p == nil || p.Checks.Errors[id.server] == nil {
			r.pass.failures.clear(id) // unless the planner still refuses its check
		}
	}
	if failed > 0 {
		r.log.Warn("the kernel refused some IPVS ops; the rest applied", "failed", failed, "total", len(results))
	}
	return touched
}

// objectOf names the desired object an op is about; ops on owned services
// no longer desired are named by their kernel key.
func (r *Runner) objectOf(op ipvs.Op) objectID {
	id := objectID{service: r.pass.idByKey[op.Service.Key]}
	if id.service == "" {
		id = orphanID(op.Service.Key)
	}
	if op.Kind == ipvs.OpAddDestination || op.Kind == ipvs.OpUpdateDestination || op.Kind == ipvs.OpDeleteDestination {
		id.server = netip.AddrPortFrom(op.Destination.Key.Address, op.Destination.Key.Port).String()
	}
	return id
}

func orphanID(k ipvs.ServiceKey) objectID { return objectID{service: k.String(), orphan: k} }

// guardDeletions holds back service deletions when too many go at once.
func (r *Runner) guardDeletions(ops []ipvs.Op, desired *store.State) []ipvs.Op {
	kept, g := GuardDeletions(ops, r.ipvs.owned.len(), r.guard, r.pass.guardRev, desired.Revision, desired.ConfirmedDeletions)
	if !g.Held {
		if r.pass.guardRev != 0 && g.Deletions > 0 {
			r.log.Info("mass deletion confirmed", "deletions", g.Deletions, "revision", r.pass.guardRev)
		}
		r.pass.guardRev = 0
		r.metrics.guardHeld.Set(0)
		r.passStatus(func(st *types.NodeStatus) { st.DeletionGuard = nil }, false)
		return kept
	}
	r.pass.guardRev = g.Revision
	r.metrics.guardHeld.Set(1)
	r.log.Warn("holding back a mass deletion until confirmed (meradm confirm-deletions)", "deletions", g.Deletions, "owned", g.Owned, "revision", g.Revision)
	r.passStatus(func(st *types.NodeStatus) {
		st.DeletionGuard = &types.DeletionGuard{Held: true, Deletions: uint32(g.Deletions), Owned: uint32(g.Owned), Revision: g.Revision}
	}, false)
	return kept
}

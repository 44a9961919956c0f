package node

import (
	"fmt"
	"net/netip"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
)

// Planner rules about the kernel table: what merlin owns, what it adopts,
// what it must leave alone, and when deletions wait for a confirmation.

// KernelView is a kernel table split by ownership.
type KernelView struct {
	Owned   map[ipvs.ServiceKey]*ipvs.VirtualServer // merlin's services as the kernel has them
	Foreign map[ipvs.ServiceKey]bool                // services merlin leaves alone
	Adopt   []ipvs.ServiceKey                       // foreign services to take over
	Forget  []ipvs.ServiceKey                       // owned keys gone from the kernel and no longer desired
}

// SplitKernel splits a kernel table: services merlin owns, and services
// that match a desired service with a VIP under one of the adopt prefixes,
// are merlin's; the rest are foreign. Owned services that vanished behind
// merlin's back stay owned while desired (the diff recreates them).
func SplitKernel(table []ipvs.VirtualServer, owned, desired map[ipvs.ServiceKey]bool, adopt []netip.Prefix) KernelView {
	kv := KernelView{Owned: map[ipvs.ServiceKey]*ipvs.VirtualServer{}, Foreign: map[ipvs.ServiceKey]bool{}}
	present := map[ipvs.ServiceKey]bool{}
	for i := range table {
		vs := &table[i]
		k := vs.Service.Key.Canonical()
		present[k] = true
		switch {
		case owned[k]:
			kv.Owned[k] = vs
		case desired[k] && adoptable(k, adopt):
			kv.Adopt = append(kv.Adopt, k)
			kv.Owned[k] = vs
		default:
			kv.Foreign[k] = true
		}
	}
	for k := range owned {
		if !present[k] && !desired[k] {
			kv.Forget = append(kv.Forget, k)
		}
	}
	return kv
}

func adoptable(k ipvs.ServiceKey, adopt []netip.Prefix) bool {
	if k.FWMark != 0 {
		return false
	}
	for _, p := range adopt {
		if p.Contains(k.Address) {
			return true
		}
	}
	return false
}

// ErrForeign: the kernel has a service at the key that merlin does not own.
func errForeign(k ipvs.ServiceKey) error {
	return fmt.Errorf("the kernel has a service %s that merlin does not own; list its VIP under adopt to take it over", k)
}

// GuardConfig: a desired state that deletes more than Fraction of the
// owned services, and more than Min of them, at once is held back until
// confirmed. A negative Fraction turns the guard off.
type GuardConfig struct {
	Fraction float64
	Min      int
}

// Guard is the deletion guard's decision.
type Guard struct {
	Held      bool
	Deletions int
	Owned     int
	Revision  int64 // the desired revision the held deletions first appeared at
}

// GuardDeletions decides whether the service deletions among ops wait.
// heldSince is the revision a deletion has been held at (0: none); it is
// released by a confirmation of that revision or a later one.
func GuardDeletions(ops []ipvs.Op, owned int, cfg GuardConfig, heldSince, revision, confirmed int64) ([]ipvs.Op, Guard) {
	g := Guard{Owned: owned}
	for _, op := range ops {
		if op.Kind == ipvs.OpDeleteService {
			g.Deletions++
		}
	}
	limit := max(cfg.Min, int(cfg.Fraction*float64(owned)))
	if cfg.Fraction < 0 || g.Deletions <= limit {
		return ops, g
	}
	g.Revision = heldSince
	if g.Revision == 0 {
		g.Revision = revision
	}
	if confirmed >= g.Revision {
		return ops, Guard{Deletions: g.Deletions, Owned: owned, Revision: g.Revision}
	}
	g.Held = true
	kept := make([]ipvs.Op, 0, len(ops)-g.Deletions)
	for _, op := range ops {
		if op.Kind != ipvs.OpDeleteService {
			kept = append(kept, op)
		}
	}
	return kept, g
}

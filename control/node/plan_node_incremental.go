package node

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/types"
)

// NodePlanner derives the node plan as services change. After the first
// plan (or a change of the node's inputs, which every VIP depends on) it
// looks only at the changed services and their VIPs and edits the last
// plan's sorted lists; the plan equals PlanNode's for the same services.
// The lists of a plan it returned are never changed (sinks keep them).
type NodePlanner struct {
	in      NodeInputs
	planned bool
	plan    NodePlan
	plans   map[string]*ServicePlan       // what the last plan was made of
	byVIP   map[netip.Addr][]*ServicePlan // sorted by ID
}

// NodeChange is what one Plan made anew, for those who report the plan a
// change at a time.
type NodeChange struct {
	// Services whose plans were replaced, and the VIPs whose states were
	// derived again; nil when everything was planned again.
	Services map[string]bool
	VIPs     map[netip.Addr]bool
	Before   NodePlan // the plan before (its lists unchanged)
}

// Plan is the node plan of services; changed names the services whose
// plans may differ from those of the last call (nil: unknown, all).
func (n *NodePlanner) Plan(services map[string]*ServicePlan, changed map[string]bool, in NodeInputs) (NodePlan, NodeChange) {
	ch := NodeChange{Before: n.plan}
	if !n.planned || changed == nil || !sameInputs(in, n.in) {
		n.full(services, in)
		return n.plan, ch
	}
	np := n.plan
	np.Down, np.Below, np.Health = slices.Clone(np.Down), slices.Clone(np.Below), slices.Clone(np.Health)
	vips := map[netip.Addr]bool{}
	ch.Services, ch.VIPs = map[string]bool{}, vips
	for id := range changed {
		old, p := n.plans[id], services[id]
		if old == p {
			continue
		}
		ch.Services[id] = true
		n.move(id, old, p, vips)
		np.Down = setMember(np.Down, id, strings.Compare, p != nil && p.AllDown)
		var below []*types.ServiceBelowThreshold
		if p != nil && p.Below != nil {
			below = []*types.ServiceBelowThreshold{belowStatus(id, p.Below)}
		}
		np.Below = replaceRun(np.Below, id, byServiceID[*types.ServiceBelowThreshold], below)
		var health []*types.ServerHealth
		if p != nil {
			health = appendHealth(nil, p)
		}
		np.Health = replaceRun(np.Health, id, byServiceID[*types.ServerHealth], health)
	}
	np.VIPStates, np.VIPs = slices.Clone(np.VIPStates), slices.Clone(np.VIPs)
	for addr := range vips {
		plans := n.byVIP[addr]
		var st []VIPState
		if len(plans) > 0 {
			st = []VIPState{vipState(addr, plans, in)}
		}
		np.VIPStates = replaceRun(np.VIPStates, addr, func(v VIPState, a netip.Addr) int { return v.Addr.Compare(a) }, st)
		np.VIPs = setMember(np.VIPs, addr, netip.Addr.Compare, slices.ContainsFunc(plans, func(p *ServicePlan) bool { return p.Err == nil }))
	}
	n.plan = np
	return np, ch
}

// full plans every service again.
func (n *NodePlanner) full(services map[string]*ServicePlan, in NodeInputs) {
	n.plan, n.in, n.planned = PlanNode(services, in), in, true
	n.plans, n.byVIP = maps.Clone(services), map[netip.Addr][]*ServicePlan{}
	for _, id := range slices.Sorted(maps.Keys(services)) {
		if addr, ok := services[id].VIP(); ok {
			n.byVIP[addr] = append(n.byVIP[addr], services[id])
		}
	}
}

// move replaces service id's plan old by p (either nil: none) among its
// VIP's plans, noting the VIPs touched.
func (n *NodePlanner) move(id string, old, p *ServicePlan, touched map[netip.Addr]bool) {
	byID := func(s *ServicePlan, id string) int { return strings.Compare(s.ID, id) }
	if addr, ok := old.VIP(); ok {
		list := n.byVIP[addr]
		if i, found := slices.BinarySearchFunc(list, id, byID); found {
			list = slices.Delete(slices.Clone(list), i, i+1)
		}
		n.byVIP[addr], touched[addr] = list, true
		if len(list) == 0 {
			delete(n.byVIP, addr)
		}
	}
	if addr, ok := p.VIP(); ok {
		list := slices.Clone(n.byVIP[addr])
		i, _ := slices.BinarySearchFunc(list, id, byID)
		n.byVIP[addr], touched[addr] = slices.Insert(list, i, p), true
	}
	if p == nil {
		delete(n.plans, id)
	} else {
		n.plans[id] = p
	}
}

// sameInputs: nothing every VIP depends on changed.
func sameInputs(a, b NodeInputs) bool {
	return a.NotReady == b.NotReady && a.Drain == b.Drain && a.HealthStuck == b.HealthStuck && a.LinkBandwidth == b.LinkBandwidth &&
		maps.Equal(a.Failed, b.Failed)
}

// replaceRun replaces the run of elements of list (sorted, cmp comparing
// an element's key with k) whose key is k by with, in place: list is a
// copy.
func replaceRun[E, K any](list []E, k K, cmp func(E, K) int, with []E) []E {
	lo, _ := slices.BinarySearchFunc(list, k, cmp)
	hi := lo
	for hi < len(list) && cmp(list[hi], k) == 0 {
		hi++
	}
	return slices.Replace(list, lo, hi, with...)
}

// setMember puts v into the sorted list (a copy) or takes it out.
func setMember[E any](list []E, v E, cmp func(a, b E) int, in bool) []E {
	i, found := slices.BinarySearchFunc(list, v, cmp)
	switch {
	case in && !found:
		return slices.Insert(list, i, v)
	case !in && found:
		return slices.Delete(list, i, i+1)
	}
	return list
}

func byServiceID[E interface{ GetServiceId() string }](e E, id string) int {
	return strings.Compare(e.GetServiceId(), id)
}

// belowStatus is how node status shows a service below its threshold.
func belowStatus(id string, b *BelowThreshold) *types.ServiceBelowThreshold {
	return &types.ServiceBelowThreshold{ServiceId: id, Healthy: uint32(b.Healthy), Total: uint32(b.Total), Need: uint32(b.Need),
		Action: ActionName(b.Action), Since: timestamppb.New(b.Since)}
}

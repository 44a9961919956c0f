package node

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/internal/chunklist"
	"github.com/merlin-ipvs/merlin/types"
)

// NodePlanner derives the node plan as services change. After the first
// plan (or a change of the node's inputs, which every VIP depends on) it
// looks only at the changed services and their VIPs and splices them into
// the last plan's lists (sharing the rest); the plan equals PlanNode's for
// the same services. A plan it returned is never changed (sinks keep it).
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
	vips := map[netip.Addr]bool{}
	ch.Services, ch.VIPs = map[string]bool{}, vips
	for id := range changed {
		if old, p := n.plans[id], services[id]; old != p {
			ch.Services[id] = true
			n.move(id, old, p, vips)
		}
	}
	// Each list shares all but the chunks the changed runs fall in with
	// the plan before: a change of k services costs about k chunks and
	// the chunk index, not the list's length.
	ids := slices.Sorted(maps.Keys(ch.Services))
	np.Down = chunklist.Splice(np.Down, ids, identity, strings.Compare, func(id string) []string {
		if p := services[id]; p != nil && p.AllDown {
			return []string{id}
		}
		return nil
	})
	np.Below = chunklist.Splice(np.Below, ids, (*types.ServiceBelowThreshold).GetServiceId, strings.Compare, func(id string) []*types.ServiceBelowThreshold {
		if p := services[id]; p != nil && p.Below != nil {
			return []*types.ServiceBelowThreshold{belowStatus(id, p.Below)}
		}
		return nil
	})
	np.Health = chunklist.Splice(np.Health, ids, (*types.ServerHealth).GetServiceId, strings.Compare, func(id string) []*types.ServerHealth {
		if p := services[id]; p != nil {
			return appendHealth(nil, p)
		}
		return nil
	})
	addrs := slices.SortedFunc(maps.Keys(vips), netip.Addr.Compare)
	np.VIPStates = chunklist.Splice(np.VIPStates, addrs, VIPState.address, netip.Addr.Compare, func(a netip.Addr) []VIPState {
		if plans := n.byVIP[a]; len(plans) > 0 {
			return []VIPState{vipState(a, plans, in)}
		}
		return nil
	})
	np.VIPs = chunklist.Splice(np.VIPs, addrs, identity, netip.Addr.Compare, func(a netip.Addr) []netip.Addr {
		if slices.ContainsFunc(n.byVIP[a], func(p *ServicePlan) bool { return p.Err == nil }) {
			return []netip.Addr{a}
		}
		return nil
	})
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

func identity[T any](t T) T { return t }

func (v VIPState) address() netip.Addr { return v.Addr }

// belowStatus is how node status shows a service below its threshold.
func belowStatus(id string, b *BelowThreshold) *types.ServiceBelowThreshold {
	return &types.ServiceBelowThreshold{ServiceId: id, Healthy: uint32(b.Healthy), Total: uint32(b.Total), Need: uint32(b.Need),
		Action: ActionName(b.Action), Since: timestamppb.New(b.Since)}
}

package node

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/internal/chunklist"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// VIPServing says whether this node can serve a VIP (what a BGP speaker
// announces or withdraws).
type VIPServing string

// Serving states of a VIP.
const (
	VIPServed          VIPServing = "serving"
	VIPNoHealthyServer VIPServing = "no_healthy_server"
	VIPBelowThreshold  VIPServing = "below_threshold" // withdrawn: a service's healthy threshold says so
	VIPNotReady        VIPServing = "not_ready"
	VIPFailed          VIPServing = "ipvs_failed"
	VIPDraining        VIPServing = "draining" // announced with GRACEFUL_SHUTDOWN
	VIPDrained         VIPServing = "drained"  // withdrawn by a drain
)

// VIPState is one VIP address with the services on it and whether this
// node can serve it, with the reason when it cannot, and how BGP
// announces it.
type VIPState struct {
	Addr     netip.Addr
	State    VIPServing
	Reason   string
	Services []string // IDs, sorted
	Announce bool
	Route    RouteAttrs
}

// RouteAttrs are the BGP attributes of a VIP's route: what its services
// ask for, and the graceful shutdown marks while draining.
type RouteAttrs struct {
	Communities      []uint32 // sorted, unique
	LargeCommunities []model.LargeCommunity
	LocalPref        *uint32
	GracefulShutdown bool // RFC 8326: GRACEFUL_SHUTDOWN community, local preference 0
	// LinkBandwidth in bytes per second (0: the route carries none).
	LinkBandwidth float32
}

// NodeInputs is what the node plan needs beyond the service plans.
type NodeInputs struct {
	// NotReady, when set, says why nothing is served yet (before the first
	// completed reconcile, or before the first health results).
	NotReady string
	// Failed names the services the kernel refused on this node.
	Failed map[string]bool
	Drain  DrainPhase
	// HealthStuck, when set, says why health results stopped coming in:
	// nothing is announced while the node cannot tell what it serves.
	HealthStuck   string
	LinkBandwidth LinkBandwidthInputs
}

// LinkBandwidthInputs decide the link bandwidth a VIP is announced with.
type LinkBandwidthInputs struct {
	// Default: services that do not say (announce.link_bandwidth unset)
	// send it (the cluster's BGP settings).
	Default bool
	// PerWeight: bytes per second announced per unit of healthy effective
	// weight — 1 Mbit/s × the node's capacity factor × the share a drain
	// ramp leaves.
	PerWeight float64
}

// MinLinkBandwidth is the least bandwidth a VIP is announced with, 1 Mbit/s
// in bytes per second: FRR counts whole Mbit/s and takes 0 for no
// bandwidth at all, which would turn the router's weighted ECMP off.
const MinLinkBandwidth = 125_000

// linkBandwidth is what a VIP with weight healthy weight is announced with.
func (in LinkBandwidthInputs) linkBandwidth(weight uint64) float32 {
	return float32(max(float64(weight)*in.PerWeight, MinLinkBandwidth))
}

// DrainPhase is where a node's BGP drain stands (the runner reads the
// clock and says which).
type DrainPhase int

// Drain phases.
const (
	NotDraining DrainPhase = iota
	Draining               // announced with GRACEFUL_SHUTDOWN
	Drained                // past the drain's withdraw_after: withdrawn
	Ramping                // announced normally with a lowered link bandwidth
)

// NodePlan is what the node programs beside the IPVS table, derived from
// all service plans.
//
// Its lists are chunklist.Lists, so that a plan made a change at a time
// (NodePlanner) shares all but the changed entries' chunks with the plan
// before, which sinks may still hold.
type NodePlan struct {
	Ready     bool                                         // the first reconcile and health results are in
	VIPs      chunklist.List[netip.Addr]                   // of every programmable address-based service, sorted
	VIPStates chunklist.List[VIPState]                     // one per VIP, sorted by address
	Health    chunklist.List[*types.ServerHealth]          // sorted by service
	Down      chunklist.List[string]                       // services whose servers are all down, sorted
	Below     chunklist.List[*types.ServiceBelowThreshold] // sorted by service
	// LinkBandwidthPerWeight is the node's factor in every VIP's link
	// bandwidth (NodeInputs.LinkBandwidth.PerWeight).
	LinkBandwidthPerWeight float64
}

// PlanNode derives the node plan from the service plans.
func PlanNode(services map[string]*ServicePlan, in NodeInputs) NodePlan {
	np := NodePlan{Ready: in.NotReady == "", LinkBandwidthPerWeight: in.LinkBandwidth.PerWeight}
	byVIP := map[netip.Addr][]*ServicePlan{}
	var down []string
	var below []*types.ServiceBelowThreshold
	var health []*types.ServerHealth
	for _, id := range slices.Sorted(maps.Keys(services)) {
		p := services[id]
		if p.AllDown {
			down = append(down, id)
		}
		if b := p.Below; b != nil {
			below = append(below, belowStatus(id, b))
		}
		health = appendHealth(health, p)
		if addr, ok := p.VIP(); ok {
			byVIP[addr] = append(byVIP[addr], p)
		}
	}
	var vips []netip.Addr
	var states []VIPState
	for _, addr := range slices.SortedFunc(maps.Keys(byVIP), netip.Addr.Compare) {
		states = append(states, vipState(addr, byVIP[addr], in))
		if slices.ContainsFunc(byVIP[addr], func(p *ServicePlan) bool { return p.Err == nil }) {
			vips = append(vips, addr)
		}
	}
	np.Down, np.Below, np.Health = chunklist.From(down), chunklist.From(below), chunklist.From(health)
	np.VIPs, np.VIPStates = chunklist.From(vips), chunklist.From(states)
	return np
}

// vipState: served when any service on the VIP has a server up and was
// programmed; otherwise the first reason that applies. It is announced
// while served (or draining), or when a programmed service on it asks to
// be announced always.
func vipState(addr netip.Addr, plans []*ServicePlan, in NodeInputs) VIPState {
	st := VIPState{Addr: addr}
	var failed, noServer, allDown, below []string
	always, sendBandwidth, weight := false, false, uint64(0)
	for _, p := range plans {
		st.Services = append(st.Services, p.ID)
		switch {
		case p.Err != nil || in.Failed[p.ID]:
			failed = append(failed, p.ID)
			continue
		case len(p.Virtual.Destinations) == 0:
			noServer = append(noServer, p.ID)
		case p.Below != nil && p.Below.Action == types.BelowThresholdAction_WITHDRAW:
			below = append(below, p.ID+" "+p.Below.reason())
		case p.AllDown && (p.Below == nil || p.Below.Action != types.BelowThresholdAction_SORRY):
			allDown = append(allDown, p.ID)
		default:
			st.State = VIPServed
			weight += healthyWeight(p)
		}
		a := p.State.Service.GetAnnounce()
		always = always || a.GetAlways()
		sendBandwidth = sendBandwidth || (a.GetLinkBandwidth() == nil && in.LinkBandwidth.Default) || a.GetLinkBandwidth().GetValue()
		st.Route.add(a)
	}
	served := st.State == VIPServed
	switch {
	case in.NotReady != "":
		st.State, st.Reason = VIPNotReady, in.NotReady
	case in.HealthStuck != "":
		st.State, st.Reason = VIPNotReady, in.HealthStuck
	case in.Drain == Drained:
		st.State, st.Reason = VIPDrained, "the node is drained"
	case in.Drain == Ramping && (served || always):
		st.State, st.Reason, st.Announce = VIPDraining, "the node is draining: its link bandwidth ramps down", true
	case in.Drain == Draining && (served || always):
		st.State, st.Reason, st.Announce = VIPDraining, "the node is draining", true
		st.Route.GracefulShutdown = true
	case served:
		st.Announce = true
	case len(below) > 0:
		st.State, st.Announce = VIPBelowThreshold, always
		st.Reason = strings.Join(below, "; ")
		if always {
			st.Reason += " (announced: announce.always)"
		}
	case len(allDown) > 0 || len(noServer) > 0:
		st.State, st.Announce = VIPNoHealthyServer, always
		st.Reason = joinReasons(map[string][]string{"every server is down": allDown, "no servers": noServer})
		if always {
			st.Reason += " (announced: announce.always)"
		}
	default:
		st.State, st.Reason = VIPFailed, "not programmed: "+strings.Join(failed, ", ")
	}
	if !st.Announce {
		st.Route = RouteAttrs{}
	} else if sendBandwidth {
		st.Route.LinkBandwidth = in.LinkBandwidth.linkBandwidth(weight)
	}
	return st
}

// healthyWeight is the sum of the weights a service's destinations are
// programmed with (0 for a server that is down; the sorry servers' while
// they serve).
func healthyWeight(p *ServicePlan) uint64 {
	var w uint64
	for _, d := range p.Virtual.Destinations {
		w += uint64(d.Config.Weight)
	}
	return w
}

// add joins a service's announcement options into the VIP's route.
func (r *RouteAttrs) add(a *types.Announce) {
	for _, c := range a.GetCommunities() {
		if v, err := model.ParseCommunity(c); err == nil && !slices.Contains(r.Communities, v) {
			r.Communities = append(r.Communities, v)
		}
	}
	slices.Sort(r.Communities)
	for _, c := range a.GetLargeCommunities() {
		if v, err := model.ParseLargeCommunity(c); err == nil && !slices.Contains(r.LargeCommunities, v) {
			r.LargeCommunities = append(r.LargeCommunities, v)
		}
	}
	slices.SortFunc(r.LargeCommunities, func(a, b model.LargeCommunity) int { return slices.Compare(a[:], b[:]) })
	if lp := a.GetLocalPreference(); lp != nil && (r.LocalPref == nil || lp.Value > *r.LocalPref) {
		v := lp.Value
		r.LocalPref = &v
	}
}

func joinReasons(by map[string][]string) string {
	var parts []string
	for _, reason := range slices.Sorted(maps.Keys(by)) {
		if ids := by[reason]; len(ids) > 0 {
			parts = append(parts, fmt.Sprintf("%s: %s", reason, strings.Join(ids, ", ")))
		}
	}
	return strings.Join(parts, "; ")
}

func appendHealth(out []*types.ServerHealth, p *ServicePlan) []*types.ServerHealth {
	for _, sp := range p.Servers {
		if !sp.Checked {
			continue
		}
		sh := &types.ServerHealth{ServiceId: p.ID, Server: sp.Key, Up: sp.Up, EffectiveWeight: sp.Weight}
		if sp.Known {
			sh.LastError, sh.Since = sp.Health.LastError, timestamppb.New(sp.Health.Since)
		}
		out = append(out, sh)
	}
	return out
}

func compareServiceKeys(a, b ipvs.ServiceKey) int {
	return cmp.Or(cmp.Compare(a.FWMark, b.FWMark), a.Address.Compare(b.Address), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Family, b.Family))
}

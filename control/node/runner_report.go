package node

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/merlin-ipvs/merlin/internal/chunklist"
	"github.com/merlin-ipvs/merlin/types"
)

// nodeReport puts the node plan's health and VIP states into metrics and
// the figures node status shows. After the first report it touches only
// the series of the services and VIPs a change made anew.
type nodeReport struct {
	m          *NodeMetrics
	log        *slog.Logger
	serving    int
	announced  int
	notServing chunklist.List[notServingVIP]       // sorted by address
	checked    int                                 // health-checked servers
	down       chunklist.List[*types.ServerHealth] // the checked servers down, sorted by service
}

type notServingVIP struct {
	addr   netip.Addr
	status *types.VIPStatus
}

// report takes plan np, ch saying what it made anew of the one before.
func (r *nodeReport) report(np NodePlan, ch NodeChange, services map[string]*ServicePlan) {
	if ch.Services == nil {
		r.all(np, ch.Before, services)
	} else {
		ids := slices.Sorted(maps.Keys(ch.Services))
		for _, id := range ids {
			r.service(id, np, ch.Before, services[id] != nil)
		}
		r.down = chunklist.Splice(r.down, ids, (*types.ServerHealth).GetServiceId, strings.Compare, func(id string) []*types.ServerHealth {
			return downOf(healthOf(np.Health, id))
		})
		r.vips(slices.SortedFunc(maps.Keys(ch.VIPs), netip.Addr.Compare), np, ch.Before)
	}
	r.m.vips.WithLabelValues(string(VIPServed)).Set(float64(r.serving))
	r.m.vips.WithLabelValues("not_serving").Set(float64(r.notServing.Len()))
}

// fillStatus puts the report of np into node status st, its lists bounded.
func (r *nodeReport) fillStatus(st *types.NodeStatus, np NodePlan) {
	st.Servers = r.serverStatus(st, np)
	st.ServersChecked, st.ServersUp = uint32(r.checked), uint32(r.checked-r.down.Len())
	st.ServicesDown = boundedHead(st, omittedServicesDown, np.Down)
	st.ServicesBelow = boundedHead(st, omittedServicesBelow, np.Below)
	st.VipsNotServing = r.notServingStatus(st)
	st.VipsServing, st.VipsAnnounced = uint32(r.serving), uint32(r.announced)
}

// notServingStatus is the VIPs not served, as node status lists them
// (bounded, the rest counted in st).
func (r *nodeReport) notServingStatus(st *types.NodeStatus) []*types.VIPStatus {
	listed := boundedHead(st, omittedVIPsNotServing, r.notServing)
	out := make([]*types.VIPStatus, len(listed))
	for i, v := range listed {
		out[i] = v.status
	}
	return out
}

// serverStatus is the servers node status lists: every checked one while
// there are few, else those down (bounded, the rest counted in st).
func (r *nodeReport) serverStatus(st *types.NodeStatus, np NodePlan) []*types.ServerHealth {
	if r.checked <= maxStatusEntries {
		setOmitted(st, omittedServers, 0)
		return np.Health.Slice()
	}
	return boundedHead(st, omittedServers, r.down)
}

// downOf is the servers of health that are down.
func downOf(health []*types.ServerHealth) []*types.ServerHealth {
	var out []*types.ServerHealth
	for _, h := range health {
		if !h.Up {
			out = append(out, h)
		}
	}
	return out
}

// all reports every service and VIP again.
func (r *nodeReport) all(np, before NodePlan, services map[string]*ServicePlan) {
	down := make(map[string]bool, np.Down.Len())
	for id := range np.Down.All() {
		down[id] = true
	}
	for id := range before.Down.All() {
		if !down[id] {
			r.log.Info("the service has a server up again", "service", id)
		}
	}
	for id := range np.Down.All() {
		if !isDown(before, id) {
			r.log.Warn("every server of the service is down", "service", id)
		}
	}
	r.m.setServicesDown(services, down)
	health := np.Health.Slice()
	r.m.setServerHealth(np.Health)
	r.checked, r.down = len(health), chunklist.From(downOf(health))
	r.m.serviceBelow.Reset()
	for b := range np.Below.All() {
		r.m.serviceBelow.WithLabelValues(b.ServiceId, b.Action).Set(1)
	}
	r.m.vipAnnounced.Reset()
	r.m.vipBandwidth.Reset()
	r.serving, r.announced = 0, 0
	var notServing []notServingVIP
	for v := range np.VIPStates.All() {
		if st := r.add(v); st != nil {
			notServing = append(notServing, notServingVIP{addr: v.Addr, status: st})
		}
	}
	r.notServing = chunklist.From(notServing)
}

// service reports service id anew.
func (r *nodeReport) service(id string, np, before NodePlan, exists bool) {
	was, is := isDown(before, id), isDown(np, id)
	switch {
	case is && !was:
		r.log.Warn("every server of the service is down", "service", id)
	case was && !is:
		r.log.Info("the service has a server up again", "service", id)
	}
	r.m.setServiceDown(id, exists, is)
	old, now := healthOf(before.Health, id), healthOf(np.Health, id)
	r.m.setServerHealth(np.Health)
	r.checked += len(now) - len(old)
	for _, b := range belowOf(before.Below, id) {
		r.m.serviceBelow.DeleteLabelValues(b.ServiceId, b.Action)
	}
	for _, b := range belowOf(np.Below, id) {
		r.m.serviceBelow.WithLabelValues(b.ServiceId, b.Action).Set(1)
	}
}

// vips reports the states of addrs (sorted) anew; the list of VIPs not
// served is copied once, the changed ones spliced in.
func (r *nodeReport) vips(addrs []netip.Addr, np, before NodePlan) {
	now := make(map[netip.Addr]*types.VIPStatus, len(addrs))
	for _, addr := range addrs {
		if old, ok := vipStateOf(before.VIPStates, addr); ok {
			r.m.vipAnnounced.DeleteLabelValues(addr.String(), string(old.State))
			r.m.vipBandwidth.DeleteLabelValues(addr.String())
			r.serving -= b2i(old.State == VIPServed)
			r.announced -= b2i(old.Announce)
		}
		if v, ok := vipStateOf(np.VIPStates, addr); ok {
			now[addr] = r.add(v)
		}
	}
	r.notServing = chunklist.Splice(r.notServing, addrs, func(v notServingVIP) netip.Addr { return v.addr }, netip.Addr.Compare,
		func(a netip.Addr) []notServingVIP {
			if st := now[a]; st != nil {
				return []notServingVIP{{addr: a, status: st}}
			}
			return nil
		})
}

// add reports a VIP's series and counts; it returns its status when it is
// not served.
func (r *nodeReport) add(v VIPState) *types.VIPStatus {
	r.m.vipAnnounced.WithLabelValues(v.Addr.String(), string(v.State)).Set(b2f(v.Announce))
	if v.Route.LinkBandwidth > 0 {
		r.m.vipBandwidth.WithLabelValues(v.Addr.String()).Set(float64(v.Route.LinkBandwidth))
	}
	r.announced += b2i(v.Announce)
	if v.State == VIPServed {
		r.serving++
		return nil
	}
	return &types.VIPStatus{Address: v.Addr.String(), State: string(v.State), Reason: v.Reason, Services: v.Services, Announced: v.Announce}
}

// healthOf is service id's servers in a node plan's health list.
func healthOf(list chunklist.List[*types.ServerHealth], id string) []*types.ServerHealth {
	return chunklist.Run(list, id, (*types.ServerHealth).GetServiceId, strings.Compare)
}

// belowOf is service id's entry in a node plan's list of services below
// their threshold (none or one).
func belowOf(list chunklist.List[*types.ServiceBelowThreshold], id string) []*types.ServiceBelowThreshold {
	return chunklist.Run(list, id, (*types.ServiceBelowThreshold).GetServiceId, strings.Compare)
}

// isDown says whether service id has every server down in np.
func isDown(np NodePlan, id string) bool {
	_, down := chunklist.Find(np.Down, id, identity, strings.Compare)
	return down
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// NodeReport puts node plans into the node's metrics and status a change
// at a time, with the functions the runner uses (exported for
// bench/flatbench).
type NodeReport struct{ r nodeReport }

// NewNodeReport reports into m.
func NewNodeReport(m *NodeMetrics, log *slog.Logger) *NodeReport {
	return &NodeReport{r: nodeReport{m: m, log: log}}
}

// Report reports np (ch says what it made anew of the plan before) and
// puts it into node status st, bounded as the runner keeps it.
func (n *NodeReport) Report(np NodePlan, ch NodeChange, services map[string]*ServicePlan, st *types.NodeStatus) {
	n.r.report(np, ch, services)
	n.r.fillStatus(st, np)
	fitStatus(st)
}

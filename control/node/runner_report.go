package node

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"

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
	notServing []notServingVIP       // sorted by address
	checked    int                   // health-checked servers
	down       []*types.ServerHealth // the checked servers down, sorted by service
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
		r.down = splice(r.down, ids, (*types.ServerHealth).GetServiceId, strings.Compare, func(id string) []*types.ServerHealth {
			return downOf(runOf(np.Health, id))
		})
		r.vips(slices.SortedFunc(maps.Keys(ch.VIPs), netip.Addr.Compare), np, ch.Before)
	}
	r.m.vips.WithLabelValues(string(VIPServed)).Set(float64(r.serving))
	r.m.vips.WithLabelValues("not_serving").Set(float64(len(r.notServing)))
}

// fillStatus puts the report of np into node status st, its lists bounded.
func (r *nodeReport) fillStatus(st *types.NodeStatus, np NodePlan) {
	st.Servers = bounded(st, omittedServers, r.serverStatus(np))
	st.ServersChecked, st.ServersUp = uint32(r.checked), uint32(r.checked-len(r.down))
	st.ServicesDown = bounded(st, omittedServicesDown, np.Down)
	st.ServicesBelow = bounded(st, omittedServicesBelow, np.Below)
	st.VipsNotServing = r.notServingStatus(st)
	st.VipsServing, st.VipsAnnounced = uint32(r.serving), uint32(r.announced)
}

// notServingStatus is the VIPs not served, as node status lists them
// (bounded, the rest counted in st).
func (r *nodeReport) notServingStatus(st *types.NodeStatus) []*types.VIPStatus {
	listed := bounded(st, omittedVIPsNotServing, r.notServing)
	out := make([]*types.VIPStatus, len(listed))
	for i, v := range listed {
		out[i] = v.status
	}
	return out
}

// serverStatus is the servers node status lists (before its bound): every
// checked one while there are few, else those down.
func (r *nodeReport) serverStatus(np NodePlan) []*types.ServerHealth {
	if r.checked <= maxStatusEntries {
		return np.Health
	}
	return r.down
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
	down := make(map[string]bool, len(np.Down))
	for _, id := range np.Down {
		down[id] = true
	}
	for _, id := range before.Down {
		if !down[id] {
			r.log.Info("the service has a server up again", "service", id)
		}
	}
	for _, id := range np.Down {
		if _, was := slices.BinarySearch(before.Down, id); !was {
			r.log.Warn("every server of the service is down", "service", id)
		}
	}
	r.m.setServicesDown(services, down)
	r.m.setServerHealth(np.Health)
	r.checked, r.down = len(np.Health), downOf(np.Health)
	r.m.serviceBelow.Reset()
	for _, b := range np.Below {
		r.m.serviceBelow.WithLabelValues(b.ServiceId, b.Action).Set(1)
	}
	r.m.vipAnnounced.Reset()
	r.m.vipBandwidth.Reset()
	r.serving, r.announced, r.notServing = 0, 0, nil
	for _, v := range np.VIPStates {
		if st := r.add(v); st != nil {
			r.notServing = append(r.notServing, notServingVIP{addr: v.Addr, status: st})
		}
	}
}

// service reports service id anew.
func (r *nodeReport) service(id string, np, before NodePlan, exists bool) {
	_, was := slices.BinarySearch(before.Down, id)
	_, is := slices.BinarySearch(np.Down, id)
	switch {
	case is && !was:
		r.log.Warn("every server of the service is down", "service", id)
	case was && !is:
		r.log.Info("the service has a server up again", "service", id)
	}
	r.m.setServiceDown(id, exists, is)
	old, now := runOf(before.Health, id), runOf(np.Health, id)
	r.m.replaceServerHealth(old, now)
	r.checked += len(now) - len(old)
	for _, b := range runOf(before.Below, id) {
		r.m.serviceBelow.DeleteLabelValues(b.ServiceId, b.Action)
	}
	for _, b := range runOf(np.Below, id) {
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
	r.notServing = splice(r.notServing, addrs, func(v notServingVIP) netip.Addr { return v.addr }, netip.Addr.Compare,
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

// runOf is the run of list (sorted by service ID) that is service id's.
func runOf[E interface{ GetServiceId() string }](list []E, id string) []E {
	lo, _ := slices.BinarySearchFunc(list, id, func(e E, id string) int { return strings.Compare(e.GetServiceId(), id) })
	hi := lo
	for hi < len(list) && strings.Compare(list[hi].GetServiceId(), id) == 0 {
		hi++
	}
	return list[lo:hi]
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

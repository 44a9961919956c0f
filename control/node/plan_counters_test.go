package node

import (
	"testing"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/types"
)

// Each forwarding method keys its servers as the forwarded packet names
// them; what the programs cannot see is not keyed.
func TestPlanCounterKeysByMethod(t *testing.T) {
	dest := func(addr string, port uint16, fwd ipvs.ForwardMethod, tun ipvs.TunnelType) ipvs.Destination {
		return ipvs.Destination{Key: ipvs.DestinationKey{Address: mustAddr(addr), Port: port}, Config: ipvs.DestinationConfig{Forward: fwd, TunnelType: tun}}
	}
	plan := func(id string, key ipvs.ServiceKey, dests ...ipvs.Destination) *ServicePlan {
		return &ServicePlan{ID: id, State: &store.ServiceState{Service: &types.VirtualService{Id: id}},
			Virtual: ipvs.VirtualServer{Service: ipvs.Service{Key: key.Canonical()}, Destinations: dests}}
	}
	web := ipvs.ServiceKey{Protocol: ipvs.TCP, Address: mustAddr("198.18.0.1"), Port: 80}
	dns := ipvs.ServiceKey{Protocol: ipvs.UDP, Address: mustAddr("2001:db8::1"), Port: 53}
	p := &Plan{Services: map[string]*ServicePlan{
		"web": plan("web", web,
			dest("198.19.0.1", 8080, ipvs.Masquerade, 0),
			dest("198.19.0.2", 80, ipvs.DirectRoute, 0),
			dest("198.19.0.3", 80, ipvs.Tunnel, ipvs.TunnelIPIP),
			dest("198.19.0.4", 80, ipvs.Tunnel, ipvs.TunnelGUE)), // not parsed: not keyed
		"dns":  plan("dns", dns, dest("2001:db8::10", 5353, ipvs.Masquerade, 0)),
		"mark": plan("mark", ipvs.ServiceKey{Family: ipvs.IPv4, FWMark: 7}, dest("198.19.0.9", 80, ipvs.Masquerade, 0)),
		"bad":  {ID: "bad", State: &store.ServiceState{Service: &types.VirtualService{Id: "bad"}}, Err: errForeign(web)},
	}}
	keys, idx := PlanCounterKeys(p)
	wantVIPs := map[xdpstats.VIPKey]string{
		{Addr: mustAddr("198.18.0.1"), Port: 80, Proto: xdpstats.TCP}:  "web",
		{Addr: mustAddr("2001:db8::1"), Port: 53, Proto: xdpstats.UDP}: "dns",
	}
	if len(keys.VIPs) != len(wantVIPs) {
		t.Fatalf("VIP keys %v", keys.VIPs)
	}
	for k, id := range wantVIPs {
		if idx.VIPs[k] != id {
			t.Errorf("VIP %s: %q, want %q", k, idx.VIPs[k], id)
		}
	}
	wantServers := map[xdpstats.ServerKey]ServerLabel{
		{Method: xdpstats.NAT, Addr: mustAddr("198.19.0.1"), Port: 8080, Proto: xdpstats.TCP}:   newServerLabel("web", "198.19.0.1:8080"),
		{Method: xdpstats.Route, Addr: mustAddr("198.19.0.2"), Port: 80, Proto: xdpstats.TCP}:   newServerLabel("web", "198.19.0.2:80"),
		{Method: xdpstats.Tunnel, Addr: mustAddr("198.19.0.3"), Port: 80, Proto: xdpstats.TCP}:  newServerLabel("web", "198.19.0.3:80"),
		{Method: xdpstats.NAT, Addr: mustAddr("2001:db8::10"), Port: 5353, Proto: xdpstats.UDP}: newServerLabel("dns", "[2001:db8::10]:5353"),
	}
	if len(keys.Servers) != len(wantServers) {
		t.Fatalf("server keys %v", keys.Servers)
	}
	for k, l := range wantServers {
		if idx.Servers[k] != l {
			t.Errorf("server %s: %+v, want %+v", k, idx.Servers[k], l)
		}
	}
	// The fwmark service's kernel counters are still named.
	if idx.Services[ipvs.ServiceKey{Family: ipvs.IPv4, FWMark: 7}.Canonical()] != "mark" || len(idx.Services) != 3 {
		t.Errorf("services %v", idx.Services)
	}
}

package node

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/types"
)

var planNow = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// checkedService is "web" on 198.18.0.1:80 with servers (IP:8080 → weight)
// checked by a TCP check on port 8099 of each server.
func checkedService(t *testing.T, slowStart time.Duration, startup types.RealServer_Startup, servers map[string]uint32) *store.ServiceState {
	t.Helper()
	svc := svcAt("web", "198.18.0.1", "wrr")
	svc.Defaults = &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{
		Endpoint: wrapperspb.String("tcp://:8099"), Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second),
		UpThreshold: 1, DownThreshold: 1, SlowStart: durationpb.New(slowStart), Startup: startup}}
	st := testState(t, svc)
	for addr, w := range servers {
		withServer(t, st, "web", addr+":8080", w)
	}
	return st.Services["web"]
}

func tcpCheck(ip string) health.Check {
	return health.Check{Kind: health.TCP, Target: netip.MustParseAddrPort(ip + ":8099"), Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
}

func weights(p *ServicePlan) []uint32 {
	var w []uint32
	for _, d := range p.Virtual.Destinations {
		w = append(w, d.Config.Weight)
	}
	return w
}

func TestPlanServiceWeights(t *testing.T) {
	c := tcpCheck("198.19.0.1")
	for name, tc := range map[string]struct {
		configured uint32
		slowStart  time.Duration
		hv         HealthView
		want       uint32
		allDown    bool
		ramping    bool
	}{
		"up":                          {10, 0, HealthView{States: map[health.Check]health.State{c: {Up: true}}}, 10, false, false},
		"down is weight 0":            {10, 0, HealthView{States: map[health.Check]health.State{c: {Up: false}}}, 0, true, false},
		"configured 0 stays 0":        {0, 0, HealthView{States: map[health.Check]health.State{c: {Up: true}}}, 0, false, false},
		"no result, starts up":        {10, 0, HealthView{Initial: map[health.Check]bool{c: true}}, 10, false, false},
		"no result, starts down":      {10, 0, HealthView{Initial: map[health.Check]bool{c: false}}, 0, true, false},
		"slow start halfway":          {10, 10 * time.Second, HealthView{States: map[health.Check]health.State{c: {Up: true, Transitioned: true, Since: planNow.Add(-5 * time.Second)}}}, 5, false, true},
		"slow start just begun":       {10, 10 * time.Second, HealthView{States: map[health.Check]health.State{c: {Up: true, Transitioned: true, Since: planNow}}}, 1, false, true},
		"slow start over":             {10, 10 * time.Second, HealthView{States: map[health.Check]health.State{c: {Up: true, Transitioned: true, Since: planNow.Add(-time.Minute)}}}, 10, false, false},
		"no slow start after a start": {10, 10 * time.Second, HealthView{States: map[health.Check]health.State{c: {Up: true, Since: planNow}}}, 10, false, false},
	} {
		t.Run(name, func(t *testing.T) {
			ss := checkedService(t, tc.slowStart, types.RealServer_FROM_KERNEL, map[string]uint32{"198.19.0.1": tc.configured})
			p := PlanService("web", ss, PlanChecks(ss, nil), tc.hv, planNow)
			if p.Err != nil || !slices.Equal(weights(p), []uint32{tc.want}) || p.AllDown != tc.allDown || !p.NextChange.IsZero() != tc.ramping {
				t.Fatalf("weights %v, all down %v, next change %v, err %v", weights(p), p.AllDown, p.NextChange, p.Err)
			}
			if tc.ramping && !p.NextChange.After(planNow) {
				t.Fatalf("slow start's next step %v is not after now", p.NextChange)
			}
		})
	}
}

func TestPlanServiceUncheckedAndBroken(t *testing.T) {
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"))
	withServer(t, st, "web", "198.19.0.1:8080", 3)
	withServer(t, st, "web", "198.19.0.2:8080", 0)
	p := PlanService("web", st.Services["web"], ServiceChecks{}, HealthView{}, planNow)
	if !slices.Equal(weights(p), []uint32{3, 0}) || p.AllDown || !p.Healthy() {
		t.Fatalf("unchecked servers keep their weights: %v, all down %v", weights(p), p.AllDown)
	}
	broken := &store.ServiceState{Service: mustNormal(t, svcAt("bad", "198.18.0.2", "rr")), Servers: map[string]*types.RealServer{}}
	broken.Service.Config.Flags = []string{"no-such-flag"} // what a future version might store
	if p := PlanService("bad", broken, ServiceChecks{}, HealthView{}, planNow); p.Err == nil || p.Healthy() {
		t.Fatal("a service that does not convert has no error")
	}
}

func TestPlanChecksStartupHints(t *testing.T) {
	kernel := &ipvs.VirtualServer{Destinations: []ipvs.Destination{
		{Key: ipvs.DestinationKey{Address: mustAddr("198.19.0.1"), Port: 8080}, Config: ipvs.DestinationConfig{Weight: 0}},
		{Key: ipvs.DestinationKey{Address: mustAddr("198.19.0.2"), Port: 8080}, Config: ipvs.DestinationConfig{Weight: 4}},
	}}
	ss := checkedService(t, 0, types.RealServer_FROM_KERNEL, map[string]uint32{"198.19.0.1": 10, "198.19.0.2": 10, "198.19.0.3": 10, "198.19.0.4": 0})
	got := map[string]StartupHint{}
	for k, sc := range PlanChecks(ss, kernel).Servers {
		got[k] = sc.Startup
	}
	want := map[string]StartupHint{"198.19.0.1:8080": HintDown, "198.19.0.2:8080": HintUp, "198.19.0.3:8080": NoHint, "198.19.0.4:8080": NoHint}
	for k, h := range want {
		if got[k] != h {
			t.Errorf("%s: hint %d, want %d", k, got[k], h)
		}
	}
	down := checkedService(t, 0, types.RealServer_DOWN, map[string]uint32{"198.19.0.2": 10})
	if h := PlanChecks(down, kernel).Servers["198.19.0.2:8080"].Startup; h != HintDown {
		t.Errorf("startup DOWN: hint %d", h)
	}
}

// A check shared by servers starts down if any says so (a restart never
// puts a downed server back), up without evidence.
func TestWantedChecksSharedStartup(t *testing.T) {
	c := tcpCheck("198.19.0.1")
	plan := func(hints ...StartupHint) map[string]ServiceChecks {
		sc := ServiceChecks{Servers: map[string]ServerCheck{}}
		for i, h := range hints {
			sc.Servers[string(rune('a'+i))] = ServerCheck{Check: c, Startup: h}
		}
		return map[string]ServiceChecks{"web": sc}
	}
	for name, tc := range map[string]struct {
		hints   []StartupHint
		decided map[string]bool
		up      bool
	}{
		"no evidence":                  {[]StartupHint{NoHint}, nil, true},
		"up":                           {[]StartupHint{HintUp, NoHint}, nil, true},
		"down beside weight 0 or none": {[]StartupHint{HintDown, NoHint}, nil, false},
		"down beside up":               {[]StartupHint{HintUp, HintDown}, nil, false},
		// What merlin decided before beats what the weights suggest: a raise
		// 0 → N it had not applied yet reads as HintDown.
		"decided up, weights say down": {[]StartupHint{HintUp, HintDown}, map[string]bool{c.Identity(): true}, true},
		"decided down, weights say up": {[]StartupHint{HintUp}, map[string]bool{c.Identity(): false}, false},
		"another check decided":        {[]StartupHint{HintDown}, map[string]bool{"tcp 198.19.0.9:80 ": true}, false},
	} {
		if got := WantedChecks(plan(tc.hints...), tc.decided)[c]; got != tc.up {
			t.Errorf("%s: starts up %v, want %v", name, got, tc.up)
		}
	}
}

func TestSplitKernelOwnershipAndAdoption(t *testing.T) {
	key := func(ip string) ipvs.ServiceKey {
		return ipvs.ServiceKey{Protocol: ipvs.TCP, Address: mustAddr(ip), Port: 80}.Canonical()
	}
	mark := ipvs.ServiceKey{FWMark: 7}.Canonical()
	table := []ipvs.VirtualServer{{Service: ipvs.Service{Key: key("198.18.0.1")}}, {Service: ipvs.Service{Key: key("198.18.0.2")}},
		{Service: ipvs.Service{Key: key("198.18.5.1")}}, {Service: ipvs.Service{Key: key("203.0.113.1")}}, {Service: ipvs.Service{Key: mark}}}
	owned := map[ipvs.ServiceKey]bool{key("198.18.0.1"): true, key("198.18.0.9"): true, key("198.18.0.8"): true}
	desired := map[ipvs.ServiceKey]bool{key("198.18.0.1"): true, key("198.18.5.1"): true, key("203.0.113.1"): true, mark: true, key("198.18.0.8"): true}
	kv := SplitKernel(table, owned, desired, []netip.Prefix{netip.MustParsePrefix("198.18.5.0/24"), netip.MustParsePrefix("0.0.0.0/0")})
	if _, ok := kv.Owned[key("198.18.0.1")]; !ok || len(kv.Owned) != 3 {
		t.Fatalf("owned %v", kv.Owned)
	}
	// Adopted: desired and under a prefix; never a firewall mark, never an undesired one.
	slices.SortFunc(kv.Adopt, compareServiceKeys)
	if !slices.Equal(kv.Adopt, []ipvs.ServiceKey{key("198.18.5.1"), key("203.0.113.1")}) {
		t.Fatalf("adopted %v", kv.Adopt)
	}
	if !kv.Foreign[key("198.18.0.2")] || !kv.Foreign[mark] || len(kv.Foreign) != 2 {
		t.Fatalf("foreign %v", kv.Foreign)
	}
	// Gone behind merlin's back: forgotten unless still desired (recreated).
	if !slices.Equal(kv.Forget, []ipvs.ServiceKey{key("198.18.0.9")}) {
		t.Fatalf("forgotten %v", kv.Forget)
	}
}

func TestGuardDeletions(t *testing.T) {
	del := ipvs.Op{Kind: ipvs.OpDeleteService}
	add := ipvs.Op{Kind: ipvs.OpAddDestination}
	ops := []ipvs.Op{del, del, del, del, add}
	cfg := GuardConfig{Fraction: 0.5, Min: 3}
	if kept, g := GuardDeletions(ops[:3], 4, cfg, 0, 20, 0); g.Held || len(kept) != 3 {
		t.Fatalf("3 of 4 is within the minimum: held %v", g.Held)
	}
	kept, g := GuardDeletions(ops, 6, cfg, 0, 20, 0)
	if !g.Held || g.Revision != 20 || g.Deletions != 4 || len(kept) != 1 || kept[0] != add {
		t.Fatalf("4 of 6: %+v, kept %v", g, kept)
	}
	if _, g := GuardDeletions(ops, 6, cfg, 20, 25, 19); !g.Held || g.Revision != 20 {
		t.Fatalf("held since 20, confirmed 19: %+v", g)
	}
	if kept, g := GuardDeletions(ops, 6, cfg, 20, 25, 20); g.Held || len(kept) != 5 {
		t.Fatalf("confirmed: %+v", g)
	}
	if _, g := GuardDeletions(ops, 6, GuardConfig{Fraction: -1}, 0, 20, 0); g.Held {
		t.Fatal("a negative fraction holds")
	}
}

func TestPlanNodeVIPStates(t *testing.T) {
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("web-udp", "198.18.0.1", "rr"), svcAt("empty", "198.18.0.2", "rr"),
		svcAt("refused", "198.18.0.3", "rr"), svcAt("fail", "198.18.0.4", "rr"))
	st.Services["web-udp"].Service.Key.Port = 53
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	withServer(t, st, "refused", "198.19.0.1:8080", 1)
	withServer(t, st, "fail", "198.19.0.1:8080", 1)
	st.Services["fail"].Service.Config.Flags = []string{"no-such-flag"}
	down := checkedService(t, 0, types.RealServer_FROM_KERNEL, map[string]uint32{"198.19.0.9": 1})
	down.Service.Id, down.Service.Key.Ip = "down", "198.18.0.5"
	st.Services["down"] = down
	fw := mustNormal(t, &types.VirtualService{Id: "mark", Key: &types.VirtualService_Key{Fwmark: 7}, Config: &types.VirtualService_Config{Scheduler: "rr"}})
	st.Services["mark"] = &store.ServiceState{Service: fw, Servers: map[string]*types.RealServer{}}
	plans := map[string]*ServicePlan{}
	for id, ss := range st.Services {
		sc := PlanChecks(ss, nil)
		plans[id] = PlanService(id, ss, sc, HealthView{States: map[health.Check]health.State{tcpCheck("198.19.0.9"): {Up: false, LastError: "refused"}}}, planNow)
	}

	np := PlanNode(plans, NodeInputs{Failed: map[string]bool{"refused": true}})
	var vips []string
	for a := range np.VIPs.All() {
		vips = append(vips, a.String())
	}
	if strings.Join(vips, " ") != "198.18.0.1 198.18.0.2 198.18.0.3 198.18.0.5" {
		t.Fatalf("VIPs %v (not the fwmark service, not the one that does not convert)", vips)
	}
	got := map[string]VIPState{}
	for v := range np.VIPStates.All() {
		got[v.Addr.String()] = v
	}
	for addr, want := range map[string]VIPServing{"198.18.0.1": VIPServed, "198.18.0.2": VIPNoHealthyServer, "198.18.0.3": VIPFailed, "198.18.0.4": VIPFailed, "198.18.0.5": VIPNoHealthyServer} {
		if got[addr].State != want {
			t.Errorf("%s: %s (%s), want %s", addr, got[addr].State, got[addr].Reason, want)
		}
	}
	if v := got["198.18.0.1"]; !slices.Equal(v.Services, []string{"web", "web-udp"}) {
		t.Errorf("services on 198.18.0.1: %v", v.Services)
	}
	if r := got["198.18.0.5"].Reason; !strings.Contains(r, "every server is down: down") {
		t.Errorf("reason %q", r)
	}
	if health := np.Health.Slice(); !slices.Equal(np.Down.Slice(), []string{"down"}) || len(health) != 1 || health[0].Up || health[0].LastError != "refused" {
		t.Fatalf("down %v, health %v", np.Down.Slice(), health)
	}
	for v := range PlanNode(plans, NodeInputs{NotReady: "waiting"}).VIPStates.All() {
		if v.State != VIPNotReady || v.Reason != "waiting" {
			t.Fatalf("a node that is not ready serves %s: %s", v.Addr, v.State)
		}
	}

	// 198.19.0.1:8080 serves two services: its packets are one count.
	keys, idx := PlanCounterKeys(&Plan{Services: plans})
	if len(keys.VIPs) != 5 || len(keys.Servers) != 2 || keys.Servers[0].Method != xdpstats.NAT || len(idx.Services) != 6 {
		t.Fatalf("counter keys %+v, index %+v", keys, idx)
	}
	if l := idx.Servers[keys.Servers[0]]; l.Service == "" || l.Server == "" {
		t.Fatalf("server label %+v", l)
	}
}

// A server whose check cannot be built is reported on its own; the others
// keep theirs.
func TestPlanChecksErrorPerServer(t *testing.T) {
	ss := checkedService(t, 0, types.RealServer_FROM_KERNEL, map[string]uint32{"198.19.0.1": 1, "198.19.0.2": 1})
	bad := proto.Clone(ss.Servers["198.19.0.2:8080"]).(*types.RealServer)
	bad.HealthCheck = &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("tcp://[::1")} // what an older version might have stored
	ss = &store.ServiceState{Service: ss.Service, Servers: map[string]*types.RealServer{"198.19.0.1:8080": ss.Servers["198.19.0.1:8080"], "198.19.0.2:8080": bad}}
	sc := PlanChecks(ss, nil)
	if len(sc.Servers) != 1 || sc.Errors["198.19.0.2:8080"] == nil || len(sc.Errors) != 1 {
		t.Fatalf("checks %v, errors %v", sc.Servers, sc.Errors)
	}
}

// A restart in the middle of a slow start goes on from the weight the
// kernel has, instead of jumping to the full weight.
func TestPlanServiceResumesSlowStart(t *testing.T) {
	c := tcpCheck("198.19.0.1")
	ss := checkedService(t, 10*time.Second, types.RealServer_FROM_KERNEL, map[string]uint32{"198.19.0.1": 10})
	kernel := &ipvs.VirtualServer{Destinations: []ipvs.Destination{{Key: ipvs.DestinationKey{Address: mustAddr("198.19.0.1"), Port: 8080}, Config: ipvs.DestinationConfig{Weight: 3}}}}
	sc := PlanChecks(ss, kernel)
	hv := HealthView{States: map[health.Check]health.State{c: {Up: true, Since: planNow}}} // started up, no transition yet
	p := PlanService("web", ss, sc, hv, planNow)
	if !slices.Equal(weights(p), []uint32{3}) || p.NextChange.IsZero() {
		t.Fatalf("at the restart: weights %v, next change %v", weights(p), p.NextChange)
	}
	if p := PlanService("web", ss, sc, hv, planNow.Add(3500*time.Millisecond)); !slices.Equal(weights(p), []uint32{6}) {
		t.Fatalf("3.5 s later: weights %v", weights(p))
	}
	if p := PlanService("web", ss, sc, hv, planNow.Add(7*time.Second)); !slices.Equal(weights(p), []uint32{10}) || !p.NextChange.IsZero() {
		t.Fatalf("after the rest of the ramp: weights %v", weights(p))
	}
}

// A server that turns off the check it would inherit gets none, and keeps
// its configured weight whatever the service's check says.
func TestPlanChecksServerOptsOut(t *testing.T) {
	ss := checkedService(t, 0, types.RealServer_FROM_KERNEL, map[string]uint32{"198.19.0.1": 4, "198.19.0.2": 4})
	off := proto.Clone(ss.Servers["198.19.0.2:8080"]).(*types.RealServer)
	off.HealthCheck = &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("")}
	ss = &store.ServiceState{Service: ss.Service, Servers: map[string]*types.RealServer{"198.19.0.1:8080": ss.Servers["198.19.0.1:8080"], "198.19.0.2:8080": off}}
	sc := PlanChecks(ss, nil)
	if _, ok := sc.Servers["198.19.0.2:8080"]; ok || len(sc.Servers) != 1 {
		t.Fatalf("checks %v", sc.Servers)
	}
	hv := HealthView{States: map[health.Check]health.State{tcpCheck("198.19.0.1"): {Up: false}}}
	if p := PlanService("web", ss, sc, hv, planNow); !slices.Equal(weights(p), []uint32{0, 4}) || p.AllDown {
		t.Fatalf("weights %v, all down %v", weights(p), p.AllDown)
	}
}

func TestPlanNodeAnnouncements(t *testing.T) {
	web := svcAt("web", "198.18.0.1", "wrr")
	web.Announce = &types.Announce{Communities: []string{"65000:2", "65000:1"}, LocalPreference: wrapperspb.UInt32(150)}
	web2 := svcAt("web-alt", "198.18.0.1", "rr")
	web2.Key.Port = 8443
	web2.Announce = &types.Announce{Communities: []string{"65000:1"}, LargeCommunities: []string{"65000:1:2"}, LocalPreference: wrapperspb.UInt32(120)}
	always := svcAt("always", "198.18.0.2", "rr")
	always.Announce = &types.Announce{Always: true}
	st := testState(t, web, web2, always, svcAt("empty", "198.18.0.3", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	plans := map[string]*ServicePlan{}
	for id, ss := range st.Services {
		plans[id] = PlanService(id, ss, PlanChecks(ss, nil), HealthView{}, planNow)
	}
	byAddr := func(in NodeInputs) map[string]VIPState {
		out := map[string]VIPState{}
		for v := range PlanNode(plans, in).VIPStates.All() {
			out[v.Addr.String()] = v
		}
		return out
	}

	got := byAddr(NodeInputs{})
	if v := got["198.18.0.1"]; !v.Announce || !slices.Equal(v.Route.Communities, []uint32{65000<<16 | 1, 65000<<16 | 2}) ||
		len(v.Route.LargeCommunities) != 1 || *v.Route.LocalPref != 150 || v.Route.GracefulShutdown {
		t.Errorf("198.18.0.1: %+v, want announced with the joined communities and the highest local preference", v)
	}
	if v := got["198.18.0.2"]; !v.Announce || v.State != VIPNoHealthyServer || !strings.Contains(v.Reason, "announce.always") {
		t.Errorf("198.18.0.2 (always, no servers): %+v", v)
	}
	if v := got["198.18.0.3"]; v.Announce {
		t.Errorf("198.18.0.3 without servers announced: %+v", v)
	}

	got = byAddr(NodeInputs{Drain: Draining})
	if v := got["198.18.0.1"]; !v.Announce || v.State != VIPDraining || !v.Route.GracefulShutdown {
		t.Errorf("draining: %+v, want announced with graceful shutdown", v)
	}
	if v := got["198.18.0.3"]; v.Announce || v.State != VIPNoHealthyServer {
		t.Errorf("draining, no servers: %+v, want withdrawn for its own reason", v)
	}
	for addr, v := range byAddr(NodeInputs{Drain: Drained}) {
		if v.Announce || v.State != VIPDrained {
			t.Errorf("drained: %s %+v", addr, v)
		}
	}
	np := PlanNode(plans, NodeInputs{NotReady: "waiting", Drain: Draining})
	if np.Ready {
		t.Error("a node that is not ready says it is")
	}
	for v := range np.VIPStates.All() {
		if v.Announce || v.State != VIPNotReady {
			t.Errorf("not ready: %s %+v", v.Addr, v)
		}
	}
}

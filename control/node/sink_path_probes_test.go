package node

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/types"
)

// A check through the VIP probes the VIP at the endpoint's port, marked
// for the server, from the node's address toward the server; the probe
// services hold that server alone, forwarded as the service forwards it;
// two servers whose marks meet get a service with no server.
func TestPathProbes(t *testing.T) {
	ss := throughVIPService(t, types.ForwardMethod_TUNNEL, "tcp://:8080", "198.19.0.1:80", "198.19.0.2:80")
	checks := PlanChecks(ss, nil)
	c := checks.Servers["198.19.0.1:80"].Check
	if c.Target != netip.MustParseAddrPort("198.18.0.1:8080") || c.Via != mustAddr("198.19.0.1") || c.Mark != PathMark("web", "198.19.0.1:80") || !IsPathMark(c.Mark) {
		t.Fatalf("check through the VIP: %+v", c)
	}
	plan := &Plan{Services: map[string]*ServicePlan{"web": PlanService("web", ss, checks, HealthView{}, time.Now())}}
	want, collided := pathProbes(plan)
	if len(want) != 2 || len(collided) != 0 {
		t.Fatalf("probe services %v, collided %v", want, collided)
	}
	vs := want[ipvs.ServiceKey{Family: ipvs.IPv4, FWMark: c.Mark}.Canonical()]
	if len(vs.Destinations) != 1 || vs.Destinations[0].Key.Address != mustAddr("198.19.0.1") || vs.Destinations[0].Config.Forward != ipvs.Tunnel || vs.Destinations[0].Config.Weight != 1 {
		t.Fatalf("probe service %+v", vs)
	}
	// The same mark for both: neither is probed through the other.
	sc := checks.Servers["198.19.0.2:80"]
	sc.Check.Mark = c.Mark
	checks.Servers["198.19.0.2:80"] = sc
	plan.Services["web"].Checks = checks
	want, collided = pathProbes(plan)
	if len(want) != 1 || len(collided) != 2 || len(want[ipvs.ServiceKey{Family: ipvs.IPv4, FWMark: c.Mark}.Canonical()].Destinations) != 0 {
		t.Fatalf("a shared mark: %v, collided %v", want, collided)
	}
}

// A probe service deleted behind merlin's back comes back at the next
// look (every 30 s: the sink is Timed).
func TestPathProbeSinkRepairs(t *testing.T) {
	ss := throughVIPService(t, types.ForwardMethod_ROUTE, "tcp://:80", "198.19.0.1:80")
	plan := &Plan{Services: map[string]*ServicePlan{"web": PlanService("web", ss, PlanChecks(ss, nil), HealthView{}, time.Now())}}
	table := newFakeTable()
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	s := NewPathProbeSink(table).(*pathProbeSink)
	s.now = func() time.Time { return now }
	key := ipvs.ServiceKey{Family: ipvs.IPv4, FWMark: PathMark("web", "198.19.0.1:80")}.Canonical()
	if err := s.Set(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	if vs, _ := table.Lookup(context.Background(), key); vs == nil || len(vs.Destinations) != 1 {
		t.Fatalf("probe service %v", vs)
	}
	if err := table.Apply(context.Background(), []ipvs.Op{{Kind: ipvs.OpDeleteService, Service: ipvs.Service{Key: key}}}); err != nil {
		t.Fatal(err)
	}
	if due := s.Due(); !due.Equal(now.Add(pathProbeVerify)) {
		t.Fatalf("due %s", due)
	}
	now = now.Add(pathProbeVerify)
	if err := s.Set(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	if vs, _ := table.Lookup(context.Background(), key); vs == nil || len(vs.Destinations) != 1 {
		t.Fatalf("the probe service deleted behind merlin's back was not put back: %v", vs)
	}
}

// throughVIPService: "web" on 198.18.0.1:80 whose servers, forwarded by
// fwd, are checked at endpoint through the VIP.
func throughVIPService(t *testing.T, fwd types.ForwardMethod, endpoint string, servers ...string) *store.ServiceState {
	t.Helper()
	svc := svcAt("web", "198.18.0.1", "wlc")
	svc.Defaults = &types.VirtualService_ServerDefaults{Forward: fwd, HealthCheck: &types.RealServer_HealthCheck{
		Endpoint: wrapperspb.String(endpoint), Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second),
		UpThreshold: 1, DownThreshold: 1, ThroughVip: wrapperspb.Bool(true)}}
	st := testState(t, svc)
	for _, s := range servers {
		withServerFwd(t, st, "web", s, 1, fwd)
	}
	return st.Services["web"]
}

package node

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
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

// TestPathProbeSinkIncrementalEqualsWholePlan: a sink given only the
// changed services leaves the kernel with the probe services a new sink
// given the whole plan makes, after each of 400 random steps — services
// coming, going, changing servers and forwarding, marks meeting (which
// fail both and make the sink fail, so the runner's next plan is whole).
func TestPathProbeSinkIncrementalEqualsWholePlan(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	ctx := context.Background()
	inc, whole := newFakeTable(), newFakeTable()
	sink := NewPathProbeSink(inc)
	plans := map[string]*ServicePlan{}
	inStep := false
	fwds := []types.ForwardMethod{types.ForwardMethod_ROUTE, types.ForwardMethod_TUNNEL}
	full, collisions := 0, 0
	for step := range 400 {
		changed := map[string]bool{}
		for range 1 + rng.IntN(3) {
			n := rng.IntN(12)
			id := fmt.Sprintf("s%d", n)
			changed[id] = true
			if rng.IntN(4) == 0 {
				delete(plans, id)
				continue
			}
			var servers []string
			for j := range rng.IntN(4) {
				servers = append(servers, fmt.Sprintf("198.19.%d.%d:80", n, j+1+rng.IntN(2)))
			}
			ss := throughVIPService(t, fwds[rng.IntN(len(fwds))], "tcp://:80", servers...)
			ss = &store.ServiceState{Service: ss.Service, Servers: ss.Servers}
			checks := PlanChecks(ss, nil)
			for name, sc := range checks.Servers {
				if rng.IntN(10) == 0 { // a mark another server may have too
					sc.Check.Mark = PathMark("shared", fmt.Sprint(rng.IntN(3)))
					checks.Servers[name] = sc
				}
			}
			plans[id] = PlanService(id, ss, checks, HealthView{}, time.Unix(1e9, 0))
		}
		p := &Plan{Services: maps.Clone(plans), Changed: changed}
		if !inStep || rng.IntN(10) == 0 {
			p.Changed = nil
		}
		if p.Changed == nil {
			full++
		}
		errInc := sink.Set(ctx, p)
		inStep = errInc == nil
		if errInc != nil {
			collisions++
		}
		errWhole := NewPathProbeSink(whole).Set(ctx, &Plan{Services: p.Services})
		if fmt.Sprint(errInc) != fmt.Sprint(errWhole) {
			t.Fatalf("step %d: error %v, want %v", step, errInc, errWhole)
		}
		got, _ := inc.Table(ctx)
		want, _ := whole.Table(ctx)
		if !sameTables(got, want) {
			t.Fatalf("step %d: the kernel holds %v, want %v", step, got, want)
		}
	}
	if full > 200 || collisions < 10 {
		t.Errorf("%d whole plans and %d steps with marks meeting in 400: the test does not test", full, collisions)
	}
}

func sameTables(a, b []ipvs.VirtualServer) bool {
	byKey := func(vs []ipvs.VirtualServer) map[ipvs.ServiceKey]ipvs.VirtualServer {
		m := map[ipvs.ServiceKey]ipvs.VirtualServer{}
		for _, v := range vs {
			m[v.Service.Key.Canonical()] = v
		}
		return m
	}
	return maps.EqualFunc(byKey(a), byKey(b), sameVirtual)
}

package node

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/types"
)

// bandwidthState: one VIP with two services; "web" has servers of weight
// 10 and 30, "api" one of weight 5.
func bandwidthState(t *testing.T, web, api *wrapperspb.BoolValue) *store.State {
	t.Helper()
	s1, s2 := svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.1", "wrr")
	s2.Key.Port = 443
	s1.Announce, s2.Announce = &types.Announce{LinkBandwidth: web}, &types.Announce{LinkBandwidth: api}
	st := testState(t, s1, s2)
	withServer(t, st, "web", "198.19.0.1:8080", 10)
	withServer(t, st, "web", "198.19.0.2:8080", 30)
	withServer(t, st, "api", "198.19.0.3:8080", 5)
	return st
}

func planVIP(t *testing.T, st *store.State, in NodeInputs, down ...string) VIPState {
	t.Helper()
	hv := HealthView{States: map[health.Check]health.State{}}
	plans := map[string]*ServicePlan{}
	for id, ss := range st.Services {
		ss.Service.Defaults = &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{
			Endpoint: wrapperspb.String("tcp://:8099"), Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second)}}
		checks := PlanChecks(ss, nil)
		for _, sc := range checks.Servers {
			hv.States[sc.Check] = health.State{Up: !slices.Contains(down, sc.Check.Target.Addr().String())}
		}
		plans[id] = PlanService(id, ss, checks, hv, time.Now())
	}
	np := PlanNode(plans, in)
	if np.VIPStates.Len() != 1 {
		t.Fatalf("VIP states %v", np.VIPStates.Slice())
	}
	return np.VIPStates.Slice()[0]
}

// The link bandwidth is the sum of the healthy effective weights of every
// service on the VIP × the node's factor, sent when any service asks (or
// the cluster's default does and no service says no); never below 1 Mbit/s.
func TestPlanLinkBandwidth(t *testing.T) {
	mbit := LinkBandwidthInputs{PerWeight: MinLinkBandwidth}
	for _, c := range []struct {
		name     string
		web, api *wrapperspb.BoolValue
		in       LinkBandwidthInputs
		drain    DrainPhase
		want     float32
	}{
		{"off by default", nil, nil, mbit, 0, 0},
		{"one service asks: every service counts", wrapperspb.Bool(true), nil, mbit, 0, 45 * MinLinkBandwidth},
		{"cluster default", nil, nil, LinkBandwidthInputs{Default: true, PerWeight: MinLinkBandwidth}, 0, 45 * MinLinkBandwidth},
		{"both refuse the default", wrapperspb.Bool(false), wrapperspb.Bool(false), LinkBandwidthInputs{Default: true, PerWeight: MinLinkBandwidth}, 0, 0},
		{"capacity factor 2", wrapperspb.Bool(true), nil, LinkBandwidthInputs{PerWeight: 2 * MinLinkBandwidth}, 0, 90 * MinLinkBandwidth},
		{"tiny factor: at least 1 Mbit/s", wrapperspb.Bool(true), nil, LinkBandwidthInputs{PerWeight: 1}, 0, MinLinkBandwidth},
		{"ramping: announced, no graceful shutdown", wrapperspb.Bool(true), nil, LinkBandwidthInputs{PerWeight: MinLinkBandwidth / 2}, Ramping, 22.5 * MinLinkBandwidth},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := planVIP(t, bandwidthState(t, c.web, c.api), NodeInputs{LinkBandwidth: c.in, Drain: c.drain})
			if !v.Announce || v.Route.LinkBandwidth != c.want || v.Route.GracefulShutdown {
				t.Fatalf("got %+v, want announced with bandwidth %v", v, c.want)
			}
			if c.drain == Ramping && v.State != VIPDraining {
				t.Fatalf("state %s while ramping", v.State)
			}
		})
	}
	// A server down takes its weight out.
	v := planVIP(t, bandwidthState(t, wrapperspb.Bool(true), nil), NodeInputs{LinkBandwidth: mbit}, "198.19.0.2")
	if v.Route.LinkBandwidth != 15*MinLinkBandwidth {
		t.Fatalf("with a server of weight 30 down: %v", v.Route.LinkBandwidth)
	}
}

// A ramp of N steps announces N/(N+1) … 1/(N+1) of the bandwidth, then the
// graceful shutdown at the last share, then the withdrawal.
func TestDrainStateRamp(t *testing.T) {
	since := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	d := &store.Drain{Since: since, Ramp: 20 * time.Second, WithdrawAfter: 5 * time.Second}
	for _, c := range []struct {
		at    time.Duration
		phase DrainPhase
		step  int
		share float64
		next  time.Duration
	}{
		{0, Ramping, 1, 10.0 / 11, 2 * time.Second},
		{3 * time.Second, Ramping, 2, 9.0 / 11, 4 * time.Second},
		{19 * time.Second, Ramping, 10, 1.0 / 11, 20 * time.Second},
		{20 * time.Second, Draining, 10, 1.0 / 11, 25 * time.Second},
		{25 * time.Second, Drained, 10, 1.0 / 11, -1},
	} {
		got := drainState(d, since.Add(c.at))
		next := since.Add(c.next)
		if c.next < 0 {
			next = time.Time{}
		}
		if got.Phase != c.phase || got.Step != c.step || got.Steps != 10 || got.Share != c.share || !got.Next.Equal(next) {
			t.Errorf("at %s: %+v, want phase %d step %d share %v next %s", c.at, got, c.phase, c.step, c.share, next)
		}
	}
	if got := drainState(&store.Drain{Since: since, Ramp: 3 * time.Second}, since); got.Steps != 3 || got.Share != 0.75 {
		t.Errorf("a 3 s ramp: %+v, want 3 steps of a second", got)
	}
	if got := drainState(&store.Drain{Since: since, Ramp: -time.Hour, WithdrawAfter: time.Second}, since); got.Phase != Draining || got.Share != 1 {
		t.Errorf("a negative stored ramp: %+v, want no ramp", got)
	}
	if got := drainState(nil, since); got.Phase != NotDraining || got.Share != 1 {
		t.Errorf("no drain: %+v", got)
	}
}

// The runner announces the link bandwidth; a server flapping faster than
// the interval moves it on the routers at most once per interval, the
// last value winning; a ramped drain lowers it step by step, then the
// graceful shutdown, then the withdrawal.
func TestRunnerLinkBandwidth(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mon := newFakeMonitor()
		ann := newRecordingAnnouncer()
		a := newTestRunner(t, RunnerConfig{LinkBandwidthCapacity: 2}, RunnerDeps{IPVS: newFakeTable(), Health: mon, Sinks: []Sink{NewBGPSink(ann, 10*time.Second)}})
		a.start(t)
		st := healthChecked(t, 0)
		withServer(t, st, "web", "198.19.0.2:8080", 30)
		st.Services["web"].Service.Announce = &types.Announce{LinkBandwidth: wrapperspb.Bool(true)}
		a.apply(t, st)
		mon.settle()
		bw := func(r []bgp.Route) float32 {
			if len(r) != 1 {
				return -1
			}
			return r[0].LinkBandwidth
		}
		ann.waitSet(t, "40 × 2 Mbit/s", func(r []bgp.Route) bool { return bw(r) == 80*MinLinkBandwidth })
		if got := a.metric(t, "merlin_vip_link_bandwidth_bytes", map[string]string{"vip": "198.18.0.1"}); got != 80*MinLinkBandwidth {
			t.Errorf("merlin_vip_link_bandwidth_bytes %v", got)
		}
		start := time.Now()
		sets := len(ann.calls())
		for i := range 5 { // down, up, down, up, down: every second
			mon.forceAddr(mustAddr("198.19.0.2"), i%2 == 1, time.Now())
			time.Sleep(time.Second)
		}
		synctest.Wait()
		if n := len(ann.calls()) - sets; n != 0 {
			t.Fatalf("%d updates within the interval: %v", n, ann.calls()[sets:])
		}
		ann.waitSet(t, "the last value once the interval is over", func(r []bgp.Route) bool { return bw(r) == 20*MinLinkBandwidth })
		if took := time.Since(start); took != 10*time.Second || len(ann.calls())-sets != 1 {
			t.Fatalf("sent after %s in %d updates", took, len(ann.calls())-sets)
		}

		drained := st.Clone()
		drained.Revision++
		drained.Drains = map[string]store.Drain{"n1": {Since: time.Now(), Ramp: 4 * time.Second, WithdrawAfter: 2 * time.Second}}
		a.Offer(drained.FullUpdate())
		for _, share := range []float32{4, 3, 2, 1} { // fifths: 4 steps of a second
			ann.waitSet(t, "a ramp step", func(r []bgp.Route) bool {
				return bw(r) == 20*MinLinkBandwidth*share/5 && len(r[0].Communities) == 0
			})
		}
		ann.waitSet(t, "GRACEFUL_SHUTDOWN at the last step's bandwidth", func(r []bgp.Route) bool {
			return len(r) == 1 && len(r[0].Communities) == 1 && r[0].Communities[0] == bgp.GracefulShutdown && bw(r) == 4*MinLinkBandwidth
		})
		synctest.Wait()
		if got := a.metric(t, "merlin_drain_link_bandwidth_share", nil); got != 0.2 {
			t.Errorf("merlin_drain_link_bandwidth_share %v after the ramp, want 0.2", got)
		}
		ann.waitSet(t, "the withdrawal", func(r []bgp.Route) bool { return len(r) == 0 })
		if took := time.Since(start); took != 16*time.Second {
			t.Fatalf("withdrawn %s after the drain began, want 6 s", took-10*time.Second)
		}
	})
}

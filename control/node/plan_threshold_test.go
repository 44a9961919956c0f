package node

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/types"
)

// thresholdState: "web" on 198.18.0.1 with ten checked servers of weight 1
// (198.19.0.1–10) and the threshold th.
func thresholdStore(t *testing.T, th *types.HealthyThreshold) *store.State {
	t.Helper()
	svc := svcAt("web", "198.18.0.1", "wrr")
	svc.Defaults = &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{
		Endpoint: wrapperspb.String("tcp://:8099"), Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second), UpThreshold: 1, DownThreshold: 1}}
	svc.HealthyThreshold = th
	st := testState(t, svc)
	for i := 1; i <= 10; i++ {
		withServer(t, st, "web", fmt.Sprintf("198.19.0.%d:8080", i), 1)
	}
	return st
}

// planWithDown plans "web" with the first down servers down.
func planWithDown(st *store.State, down int, now time.Time) *ServicePlan {
	ss := st.Services["web"]
	checks := PlanChecks(ss, nil)
	hv := HealthView{States: map[health.Check]health.State{}}
	for _, sc := range checks.Servers {
		var i int
		fmt.Sscanf(sc.Check.Target.Addr().String(), "198.19.0.%d", &i)
		hv.States[sc.Check] = health.State{Up: i > down}
	}
	return PlanService("web", ss, checks, hv, now)
}

func percent(p uint32, action types.BelowThresholdAction, sorry ...*types.RealServer_Key) *types.HealthyThreshold {
	return &types.HealthyThreshold{MinPercent: wrapperspb.UInt32(p), HoldDown: durationpb.New(10 * time.Second), Action: action, SorryServers: sorry}
}

// Below the threshold at once the first time; after that, a change waits
// for the hold-down since the last one, and the plan says when to look.
func TestApplyThresholdHoldDown(t *testing.T) {
	st := thresholdStore(t, percent(50, types.BelowThresholdAction_WITHDRAW))
	t0 := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	var s thresholdState
	step := func(at time.Duration, down int, wantBelow bool, wantNext time.Duration) {
		t.Helper()
		p := planWithDown(st, down, t0.Add(at))
		s = applyThreshold(p, s, t0.Add(at))
		next := time.Time{}
		if wantNext > 0 {
			next = t0.Add(wantNext)
		}
		if (p.Below != nil) != wantBelow || !p.NextChange.Equal(next) {
			t.Fatalf("at %s with %d down: below %+v next %s, want below %v next %s", at, down, p.Below, p.NextChange, wantBelow, next)
		}
	}
	step(0, 5, false, 0)                         // 5 of 10 up: needs 5
	step(time.Second, 6, true, 0)                // below at once: no change before
	step(2*time.Second, 4, true, 11*time.Second) // back above: waits for the hold-down
	step(5*time.Second, 6, true, 0)              // below again: nothing to wait for
	step(8*time.Second, 0, true, 11*time.Second)
	step(11*time.Second, 0, false, 0) // the hold-down is over
	step(12*time.Second, 9, false, 21*time.Second)
	if p := planWithDown(st, 9, t0.Add(21*time.Second)); applyThreshold(p, s, t0.Add(21*time.Second)).below != true || p.Below.Need != 5 || p.Below.Healthy != 1 {
		t.Fatalf("after the second hold-down: %+v", p.Below)
	}
}

// The actions: withdraw takes the VIP out (unless another service on it
// is served); keep-serving leaves it; sorry keeps it announced with the
// real servers at weight 0 and the sorry server at 1, even with every
// real server down.
func TestThresholdActions(t *testing.T) {
	sorry := &types.RealServer_Key{Ip: "198.19.1.1", Port: 8080}
	for _, c := range []struct {
		th       *types.HealthyThreshold
		down     int
		state    VIPServing
		announce bool
	}{
		{percent(50, types.BelowThresholdAction_WITHDRAW), 6, VIPBelowThreshold, false},
		{percent(50, types.BelowThresholdAction_KEEP_SERVING), 6, VIPServed, true},
		{percent(50, types.BelowThresholdAction_SORRY, sorry), 6, VIPServed, true},
		{percent(50, types.BelowThresholdAction_SORRY, sorry), 10, VIPServed, true},
		{percent(50, types.BelowThresholdAction_WITHDRAW), 5, VIPServed, true},
	} {
		st := thresholdStore(t, c.th)
		p := planWithDown(st, c.down, time.Now())
		applyThreshold(p, thresholdState{}, time.Now())
		np := PlanNode(map[string]*ServicePlan{"web": p}, NodeInputs{})
		v := np.VIPStates.Slice()[0]
		if v.State != c.state || v.Announce != c.announce {
			t.Errorf("%s, %d down: %s (%s) announced %v, want %s announced %v", c.th.Action, c.down, v.State, v.Reason, v.Announce, c.state, c.announce)
		}
		if below := np.Below.Slice(); c.down > 5 && (len(below) != 1 || below[0].Need != 5 || below[0].Action != ActionName(c.th.Action)) {
			t.Errorf("%s: node plan below %v", c.th.Action, below)
		}
		if c.th.Action == types.BelowThresholdAction_SORRY {
			i := slices.IndexFunc(p.Virtual.Destinations, func(d ipvs.Destination) bool { return d.Key.Address == mustAddr("198.19.1.1") })
			if i < 0 || p.Virtual.Destinations[i].Config.Weight != 1 || len(p.Virtual.Destinations) != 11 {
				t.Fatalf("sorry destinations %v", p.Virtual.Destinations)
			}
			for j, d := range p.Virtual.Destinations {
				if j != i && d.Config.Weight != 0 {
					t.Errorf("real server %s at weight %d while the sorry server serves", d.Key, d.Config.Weight)
				}
			}
		}
	}
}

// A set flapping every 2 s around the threshold changes the VIP's
// announcement at most once per hold-down (10 s).
func TestRunnerThresholdFlapping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mon := newFakeMonitor()
		ann := &timedAnnouncer{}
		a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: newFakeTable(), Health: mon, Sinks: []Sink{NewBGPSink(ann, 0)}})
		a.start(t)
		a.apply(t, thresholdStore(t, percent(50, types.BelowThresholdAction_WITHDRAW)))
		mon.settle()
		synctest.Wait()
		for i := range 15 { // 30 s: six servers down, then up, every 2 s
			for k := 1; k <= 6; k++ {
				mon.forceAddr(mustAddr(fmt.Sprintf("198.19.0.%d", k)), i%2 == 1, time.Now())
			}
			time.Sleep(2 * time.Second)
		}
		synctest.Wait()
		changes := ann.changes()
		for _, c := range changes {
			t.Logf("+%s announced %v", c.at.Sub(changes[0].at), c.announced)
		}
		if len(changes) < 2 || changes[0].announced != true {
			t.Fatalf("changes %v: want announced, then withdrawn at least once", changes)
		}
		for i := 2; i < len(changes); i++ {
			if gap := changes[i].at.Sub(changes[i-1].at); gap < 10*time.Second {
				t.Errorf("announce/withdraw %s apart, within the 10 s hold-down: %v", gap, changes)
			}
		}
		a.waitFor(t, "the service below in status", func(s *types.NodeStatus) bool {
			return len(s.ServicesBelow) == 1 && s.ServicesBelow[0].Action == "withdraw" && s.ServicesBelow[0].Need == 5
		})
		if got := a.metric(t, "merlin_service_below_threshold", map[string]string{"service": "web", "action": "withdraw"}); got != 1 {
			t.Errorf("merlin_service_below_threshold %v", got)
		}
	})
}

type announcement struct {
	at        time.Time
	announced bool
}

// timedAnnouncer records when the VIP's announcement changed.
type timedAnnouncer struct {
	mu  sync.Mutex
	log []announcement
}

func (a *timedAnnouncer) Set(_ context.Context, routes []bgp.Route) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if now := len(routes) == 1; len(a.log) == 0 || a.log[len(a.log)-1].announced != now {
		a.log = append(a.log, announcement{time.Now(), now})
	}
	return nil
}

func (a *timedAnnouncer) changes() []announcement {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.log)
}

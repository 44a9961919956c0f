package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/chunklist"
	"github.com/merlin-ipvs/merlin/types"
)

// recordingAnnouncer keeps every set of routes it is given.
type recordingAnnouncer struct {
	mu   sync.Mutex
	sets [][]bgp.Route
	news chan struct{}
}

func newRecordingAnnouncer() *recordingAnnouncer {
	return &recordingAnnouncer{news: make(chan struct{}, 100)}
}

func (a *recordingAnnouncer) Set(_ context.Context, routes []bgp.Route) error {
	a.mu.Lock()
	a.sets = append(a.sets, slices.Clone(routes))
	a.mu.Unlock()
	a.news <- struct{}{}
	return nil
}

func (a *recordingAnnouncer) calls() [][]bgp.Route {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.sets)
}

// waitSet waits for a set of routes satisfying cond.
func (a *recordingAnnouncer) waitSet(t *testing.T, what string, cond func([]bgp.Route) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		if sets := a.calls(); len(sets) > 0 && cond(sets[len(sets)-1]) {
			return
		}
		select {
		case <-a.news:
		case <-timeout:
			t.Fatalf("no announcement with %s; sets: %v", what, a.calls())
		}
	}
}

// updatingAnnouncer also takes changes (as bgp.Speaker does), recording
// the whole set each leaves; failUpdates refuses that many first.
type updatingAnnouncer struct {
	*recordingAnnouncer
	updates     int
	failUpdates int
}

func (a *updatingAnnouncer) Update(_ context.Context, ch bgp.Changes) error {
	a.mu.Lock()
	if a.failUpdates > 0 {
		a.failUpdates--
		a.mu.Unlock()
		return errors.New("refused")
	}
	a.updates++
	var cur []bgp.Route
	if len(a.sets) > 0 {
		cur = a.sets[len(a.sets)-1]
	}
	cur = slices.DeleteFunc(slices.Clone(cur), func(r bgp.Route) bool {
		return slices.Contains(ch.Withdraw, r.Prefix) || slices.ContainsFunc(ch.Announce, func(n bgp.Route) bool { return n.Prefix == r.Prefix })
	})
	cur = append(cur, ch.Announce...)
	slices.SortFunc(cur, func(x, y bgp.Route) int { return x.Prefix.Compare(y.Prefix) })
	a.sets = append(a.sets, cur)
	a.mu.Unlock()
	a.news <- struct{}{}
	return nil
}

// The speaker hears nothing before the node is ready (no session opens
// before the first health results); then the VIP is announced, and a drain
// marks it GRACEFUL_SHUTDOWN until the runner's own clock withdraws it.
// The same with a speaker that takes changes.
func TestRunnerBGPAnnouncements(t *testing.T) {
	t.Run("set", func(t *testing.T) { testRunnerBGPAnnouncements(t, newRecordingAnnouncer()) })
	t.Run("update", func(t *testing.T) {
		ann := &updatingAnnouncer{recordingAnnouncer: newRecordingAnnouncer()}
		testRunnerBGPAnnouncements(t, ann)
		if ann.updates == 0 {
			t.Error("the sink never sent changes alone")
		}
	})
}

type announcer interface {
	Announcer
	calls() [][]bgp.Route
	waitSet(t *testing.T, what string, cond func([]bgp.Route) bool)
}

func testRunnerBGPAnnouncements(t *testing.T, ann announcer) {
	mon := newFakeMonitor()
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: newFakeTable(), Health: mon, Sinks: []Sink{NewBGPSink(ann, 0)}})
	a.start(t)
	st := healthChecked(t, 0)
	a.apply(t, st)
	if calls := ann.calls(); len(calls) != 0 {
		t.Fatalf("the speaker was given %v before the node was ready", calls)
	}
	mon.settle()
	vip := bgp.HostRoute(mustAddr("198.18.0.1")).Prefix
	ann.waitSet(t, "the VIP announced", func(r []bgp.Route) bool { return len(r) == 1 && r[0].Prefix == vip && len(r[0].Communities) == 0 })

	drained := st.Clone()
	drained.Revision++
	drained.Drains = map[string]store.Drain{"n1": {Since: time.Now(), WithdrawAfter: 300 * time.Millisecond}}
	a.Offer(drained.FullUpdate())
	ann.waitSet(t, "GRACEFUL_SHUTDOWN", func(r []bgp.Route) bool {
		return len(r) == 1 && slices.Contains(r[0].Communities, bgp.GracefulShutdown) && r[0].LocalPref != nil && *r[0].LocalPref == 0
	})
	ann.waitSet(t, "the withdrawal", func(r []bgp.Route) bool { return len(r) == 0 })
	status := a.waitFor(t, "drained in status", func(s *types.NodeStatus) bool { return s.Drain.GetWithdrawn() })
	if len(status.VipsNotServing) != 1 || status.VipsNotServing[0].State != string(VIPDrained) || status.VipsAnnounced != 0 {
		t.Fatalf("status %v", status)
	}

	undrained := drained.Clone()
	undrained.Revision++
	undrained.Drains = nil
	a.Offer(undrained.FullUpdate())
	ann.waitSet(t, "the VIP back", func(r []bgp.Route) bool { return len(r) == 1 && len(r[0].Communities) == 0 })
}

// A monitor whose results stop coming in withdraws the node's VIPs: it
// can no longer tell whether it serves them.
func TestRunnerStuckHealthMonitorWithdraws(t *testing.T) {
	mon := newFakeMonitor()
	ann := newRecordingAnnouncer()
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: newFakeTable(), Health: mon, Sinks: []Sink{NewBGPSink(ann, 0)}})
	a.start(t)
	a.apply(t, healthChecked(t, 0))
	mon.settle()
	mon.checkedAt(time.Now())
	ann.waitSet(t, "the VIP announced", func(r []bgp.Route) bool { return len(r) == 1 })
	mon.checkedAt(time.Now().Add(-time.Hour))
	ann.waitSet(t, "the withdrawal", func(r []bgp.Route) bool { return len(r) == 0 })
	st := a.waitFor(t, "stuck in status", func(s *types.NodeStatus) bool {
		return len(s.VipsNotServing) == 1 && strings.Contains(s.VipsNotServing[0].Reason, "health monitor is stuck")
	})
	if st.VipsNotServing[0].State != string(VIPNotReady) {
		t.Fatalf("VIP state %v", st.VipsNotServing[0])
	}
	mon.checkedAt(time.Now())
	ann.waitSet(t, "the VIP back", func(r []bgp.Route) bool { return len(r) == 1 })
}

// reportingAnnouncer also reports sessions, as the speaker does.
type reportingAnnouncer struct {
	*recordingAnnouncer
	mu      sync.Mutex
	peers   []bgp.PeerStatus
	changes chan struct{}
}

func (a *reportingAnnouncer) Peers(context.Context) ([]bgp.PeerStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.peers), nil
}

func (a *reportingAnnouncer) Changes() <-chan struct{} { return a.changes }

// The runner puts the speaker's sessions into node status, and again as
// soon as the speaker says a session changed.
func TestRunnerReportsBGPSessions(t *testing.T) {
	peer := bgp.PeerStatus{Address: mustAddr("198.18.9.1"), AS: 65000, State: "active"}
	ann := &reportingAnnouncer{recordingAnnouncer: newRecordingAnnouncer(), peers: []bgp.PeerStatus{peer}, changes: make(chan struct{}, 1)}
	// Reports come at start and on changes only: the period is longer
	// than the test.
	a := newTestRunner(t, RunnerConfig{ReportPeriod: time.Hour}, RunnerDeps{IPVS: newFakeTable(), Health: newFakeMonitor(), Sinks: []Sink{NewBGPSink(ann, 0)}})
	a.start(t)
	a.waitFor(t, "the session in status", func(s *types.NodeStatus) bool {
		return len(s.BgpPeers) == 1 && s.BgpPeers[0].Address == "198.18.9.1" && s.BgpPeers[0].State == "active"
	})
	ann.mu.Lock()
	ann.peers[0].State, ann.peers[0].Up, ann.peers[0].Since = "established", true, time.Now()
	ann.mu.Unlock()
	ann.changes <- struct{}{}
	a.waitFor(t, "the session up in status", func(s *types.NodeStatus) bool {
		return len(s.BgpPeers) == 1 && s.BgpPeers[0].State == "established" && s.BgpPeers[0].UpSince != nil
	})
}

// TestBGPSinkChangesEqualWholeSets: a sink given only the changed VIPs
// and sending only changes leaves the speaker with what a sink given
// every VIP and sending whole sets leaves, after each of 1,000 random
// steps: VIPs coming, going, changing communities and link bandwidth
// (held back and sent when due, on one clock), the node's factor
// changing, refused updates (the runner's next plan has every VIP).
func TestBGPSinkChangesEqualWholeSets(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	now := time.Unix(1e9, 0)
	clock := func() time.Time { return now }
	ann := &updatingAnnouncer{recordingAnnouncer: newRecordingAnnouncer()}
	whole := newRecordingAnnouncer()
	sink := &bgpSink{a: ann, bw: newBandwidthLimiter(5*time.Second, clock), sent: map[netip.Prefix]bgp.Route{}}
	ref := &bgpSink{a: whole, bw: newBandwidthLimiter(5*time.Second, clock), sent: map[netip.Prefix]bgp.Route{}}
	ctx := context.Background()
	vips := map[netip.Addr]VIPState{}
	perWeight := 1.0
	for step := range 1000 {
		changed := map[netip.Addr]bool{}
		for range rng.IntN(4) {
			addr := netip.AddrFrom4([4]byte{198, 18, 0, byte(rng.IntN(12))})
			changed[addr] = true
			if rng.IntN(4) == 0 {
				delete(vips, addr)
				continue
			}
			v := VIPState{Addr: addr, Announce: rng.IntN(4) != 0}
			if rng.IntN(5) == 0 {
				v.Route.Communities = []uint32{uint32(rng.IntN(3))}
			}
			v.Route.LinkBandwidth = float32(rng.IntN(4) * 125_000)
			vips[addr] = v
		}
		if rng.IntN(3) == 0 { // a VIP the plan names but that did not change
			changed[netip.AddrFrom4([4]byte{198, 18, 0, byte(rng.IntN(12))})] = true
		}
		plan := &Plan{Node: NodePlan{Ready: true, VIPStates: chunklist.From(slices.SortedFunc(maps.Values(vips), func(a, b VIPState) int { return a.Addr.Compare(b.Addr) })),
			LinkBandwidthPerWeight: perWeight}, ChangedVIPs: changed}
		if rng.IntN(50) == 0 {
			perWeight++
			plan.Node.LinkBandwidthPerWeight, plan.ChangedVIPs = perWeight, nil // a node input: every VIP
		}
		if rng.IntN(20) == 0 {
			ann.failUpdates = 1
		}
		if err := sink.Set(ctx, plan); err != nil {
			plan.ChangedVIPs = nil
			if err = sink.Set(ctx, plan); err != nil {
				t.Fatalf("step %d, again after a refusal: %v", step, err)
			}
		}
		all := *plan
		all.ChangedVIPs = nil
		if err := ref.Set(ctx, &all); err != nil {
			t.Fatal(err)
		}
		for _, a := range []*recordingAnnouncer{ann.recordingAnnouncer, whole} {
			for len(a.news) > 0 { // the announcers are called synchronously
				<-a.news
			}
		}
		got, want := ann.calls(), whole.calls()
		if !slices.EqualFunc(got[len(got)-1], want[len(want)-1], bgp.Route.Equal) {
			t.Fatalf("step %d: the speaker holds %v, want %v", step, fmt.Sprint(got[len(got)-1]), fmt.Sprint(want[len(want)-1]))
		}
		if sink.Due() != ref.Due() {
			t.Fatalf("step %d: due %v, want %v", step, sink.Due(), ref.Due())
		}
		now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
	}
	if ann.updates < 300 {
		t.Errorf("%d updates in 1,000 steps: the sink keeps sending whole sets", ann.updates)
	}
}

// planRecorder is a sink keeping the plans it is given.
type planRecorder struct {
	mu    sync.Mutex
	plans []*Plan
}

func (r *planRecorder) Name() string { return "recorder" }

func (r *planRecorder) Set(_ context.Context, p *Plan) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.plans = append(r.plans, p)
	return nil
}

func (r *planRecorder) last() *Plan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.plans[len(r.plans)-1]
}

// TestRunnerNamesChangedVIPs: after a change of one service a sink is
// told that service's VIP alone (the old and the new address when it
// moves); after a change of the node's own inputs (a drain), every VIP.
func TestRunnerNamesChangedVIPs(t *testing.T) {
	rec := &planRecorder{}
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: newFakeTable(), Sinks: []Sink{rec}})
	a.start(t)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	withServer(t, st, "api", "198.19.0.2:8080", 1)
	a.apply(t, st)
	a.waitFor(t, "ready", func(s *types.NodeStatus) bool { return s.VipsAnnounced == 2 })

	st = st.Clone()
	st.Revision++
	withServer(t, st, "web", "198.19.0.3:8080", 5)
	a.apply(t, st)
	if got := rec.last(); got.ChangedVIPs == nil || !maps.Equal(got.ChangedVIPs, map[netip.Addr]bool{mustAddr("198.18.0.1"): true}) {
		t.Errorf("after web gained a server the sink was told VIPs %v, want 198.18.0.1", got.ChangedVIPs)
	}

	st = st.Clone()
	st.Revision++
	moved := svcAt("api", "198.18.0.3", "rr")
	st.Services["api"] = &store.ServiceState{Service: mustNormal(t, moved), Servers: st.Services["api"].Servers}
	a.apply(t, st)
	want := map[netip.Addr]bool{mustAddr("198.18.0.2"): true, mustAddr("198.18.0.3"): true}
	if got := rec.last(); !maps.Equal(got.ChangedVIPs, want) || !got.Changed["api"] || len(got.Changed) != 1 {
		t.Errorf("after api moved the sink was told services %v and VIPs %v, want api and %v", got.Changed, got.ChangedVIPs, want)
	}

	st = st.Clone()
	st.Revision++
	st.Drains = map[string]store.Drain{"n1": {Since: time.Now(), WithdrawAfter: time.Hour}}
	a.apply(t, st)
	if got := rec.last(); got.ChangedVIPs != nil {
		t.Errorf("after a drain the sink was told VIPs %v, want every one (nil)", got.ChangedVIPs)
	}
}

// TestRunnerUncheckedServiceReachesBGP: a service without health checks
// whose weights (with link bandwidth on) or announcement options change
// is announced anew (seen: neither made the node plan again).
func TestRunnerUncheckedServiceReachesBGP(t *testing.T) {
	ann := newRecordingAnnouncer()
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: newFakeTable(), Sinks: []Sink{NewBGPSink(ann, 1)}})
	a.start(t)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	st.Services["web"].Service.Announce = &types.Announce{LinkBandwidth: wrapperspb.Bool(true)}
	a.apply(t, st)
	ann.waitSet(t, "the VIP announced", func(r []bgp.Route) bool { return len(r) == 1 })
	st = st.Clone()
	st.Revision++
	withServer(t, st, "web", "198.19.0.1:8080", 7)
	a.apply(t, st)
	ann.waitSet(t, "7 Mbit/s", func(r []bgp.Route) bool { return len(r) == 1 && r[0].LinkBandwidth == 7*MinLinkBandwidth })
	st = st.Clone()
	st.Revision++
	svc := proto.Clone(st.Services["web"].Service).(*types.VirtualService)
	svc.Announce = &types.Announce{LinkBandwidth: wrapperspb.Bool(true), Communities: []string{"65000:1"}}
	st.Services["web"] = &store.ServiceState{Service: svc, Servers: st.Services["web"].Servers}
	a.apply(t, st)
	ann.waitSet(t, "the community", func(r []bgp.Route) bool { return len(r) == 1 && len(r[0].Communities) == 1 })
}

// TestVIPSinkLooksAtChangedVIPs: given the changed VIPs, the VIP sink
// sets the addresses again when one of them came or went, and only then.
func TestVIPSinkLooksAtChangedVIPs(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	f := &flakySink{}
	sink := NewVIPSink(f)
	ctx := context.Background()
	on := map[netip.Addr]bool{}
	for step := range 300 {
		changed := map[netip.Addr]bool{}
		for range rng.IntN(3) {
			a := netip.AddrFrom4([4]byte{198, 18, 0, byte(rng.IntN(10))})
			changed[a], on[a] = true, rng.IntN(2) == 0
		}
		vips := slices.SortedFunc(func(yield func(netip.Addr) bool) {
			for a, ok := range on {
				if ok && !yield(a) {
					return
				}
			}
		}, netip.Addr.Compare)
		before := f.last
		p := &Plan{Node: NodePlan{VIPs: chunklist.From(vips)}, ChangedVIPs: changed}
		if step == 0 {
			p.ChangedVIPs = nil
		}
		if err := sink.Set(ctx, p); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(f.last, vips) {
			t.Fatalf("step %d: the interface has %v, want %v", step, f.last, vips)
		}
		if step > 0 && len(vips) > 0 && slices.Equal(before, vips) && &f.last[0] != &before[0] {
			t.Fatalf("step %d: the same addresses set again", step)
		}
	}
}

package node

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/types"
)

// fakeLink is a sync interface's carrier and the count merlin recorded.
type fakeLink struct {
	mu       sync.Mutex
	up       bool
	changes  uint64
	recorded *uint64
}

func (l *fakeLink) Carrier() (bool, uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.up, l.changes, nil
}

func (l *fakeLink) Recorded() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.recorded == nil {
		return 0, false
	}
	return *l.recorded, true
}

func (l *fakeLink) Record(n uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recorded = &n
	return nil
}

func (l *fakeLink) flap(up bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.up = up
	l.changes++
}

// A node whose backup kept running but whose sync link went down — while
// merlin ran, or while it was stopped — warms up again once the link is
// back; the warm-up's maximum bounds a sync link that stays down.
func TestSyncWarmUpAfterTheLinkWasDown(t *testing.T) {
	ctx := context.Background()
	backup := ipvs.SyncDaemon{Role: ipvs.Backup, Interface: "eth0"}
	running := &fakeDaemons{}
	_ = running.StartSyncDaemon(ctx, backup)
	conns := uint64(100)
	count := func(context.Context) (uint64, error) { return conns, nil }
	link := &fakeLink{up: true, changes: 2}
	s := NewSyncSink(running, count, time.Minute, link, backup).(*syncSink)
	if err := s.Set(ctx, &Plan{}); err != nil {
		t.Fatal(err)
	}
	if why, _ := s.WarmingUp(ctx, time.Now()); why != "" {
		t.Fatalf("first start, nothing recorded: %q", why)
	}
	if *link.recorded != 2 {
		t.Fatalf("recorded %d carrier changes, want 2", *link.recorded)
	}

	link.flap(false)
	_, _ = s.Report(ctx)
	select {
	case <-s.Rearmed():
	default:
		t.Fatal("a ready node whose sync link went down was not re-armed")
	}
	t0 := time.Now()
	if why, _ := s.WarmingUp(ctx, t0); !strings.Contains(why, "rejoining") || !strings.Contains(why, "no carrier") {
		t.Fatalf("link down: %q", why)
	}
	link.flap(true)
	_, _ = s.Report(ctx)
	t1 := time.Now()
	if why, _ := s.WarmingUp(ctx, t1.Add(time.Second)); !strings.Contains(why, "at least 20s") {
		t.Fatalf("link back: %q", why)
	}
	_, _ = s.WarmingUp(ctx, t1.Add(minWarm+time.Second))
	if why, _ := s.WarmingUp(ctx, t1.Add(minWarm+7*time.Second)); why != "" {
		t.Fatalf("settled: %q", why)
	}
	if s.warm.rejoins != 1 {
		t.Fatalf("%d rejoins, want 1", s.warm.rejoins)
	}

	// merlin stopped, the link flapped, merlin started again: the count
	// recorded says so.
	link.flap(false)
	link.flap(true)
	again := NewSyncSink(running, count, time.Minute, link, backup)
	_ = again.Set(ctx, &Plan{})
	if why, _ := again.WarmingUp(ctx, time.Now().Add(time.Second)); !strings.Contains(why, "rejoining") {
		t.Fatalf("started after a flap while away: %q", why)
	}

	// A dedicated sync link that stays down holds the node back only until the maximum.
	link.flap(false)
	down := NewSyncSink(running, count, time.Minute, link, backup)
	_ = down.Set(ctx, &Plan{})
	now := time.Now()
	if why, _ := down.WarmingUp(ctx, now); !strings.Contains(why, "no carrier") {
		t.Fatalf("link down at start: %q", why)
	}
	if why, _ := down.WarmingUp(ctx, now.Add(time.Minute+time.Second)); why != "" {
		t.Fatalf("after the maximum: %q", why)
	}
}

// fakeWarmUp is a warm-up the test re-arms.
type fakeWarmUp struct {
	mu      sync.Mutex
	reason  string
	rearmed chan struct{}
}

func (w *fakeWarmUp) WarmingUp(context.Context, time.Time) (string, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reason, time.Now().Add(10 * time.Millisecond)
}

func (w *fakeWarmUp) Rearmed() <-chan struct{} { return w.rearmed }

func (w *fakeWarmUp) set(reason string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.reason = reason
}

// A ready node whose warm-up starts again withdraws its VIPs and says why,
// and announces them again once warm.
func TestRunnerWarmsUpAgain(t *testing.T) {
	mon := newFakeMonitor()
	ann := newRecordingAnnouncer()
	warm := &fakeWarmUp{rearmed: make(chan struct{}, 1)}
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: newFakeTable(), Health: mon, WarmUp: warm, Sinks: []Sink{NewBGPSink(ann, 0)}})
	a.start(t)
	a.apply(t, healthChecked(t, 0))
	mon.settle()
	ann.waitSet(t, "the VIP announced", func(r []bgp.Route) bool { return len(r) == 1 })

	warm.set("rejoining (the sync interface's carrier changed): the sync interface has no carrier")
	warm.rearmed <- struct{}{}
	ann.waitSet(t, "the withdrawal", func(r []bgp.Route) bool { return len(r) == 0 })
	a.waitFor(t, "the warm-up in status", func(s *types.NodeStatus) bool {
		return len(s.VipsNotServing) == 1 && strings.Contains(s.VipsNotServing[0].Reason, "connection sync warm-up: rejoining")
	})
	if n := a.metric(t, "merlin_reconcile_causes_total", map[string]string{"cause": "warm-up"}); n != 1 {
		t.Fatalf("%v passes woken by the warm-up, want 1", n)
	}
	warm.set("")
	ann.waitSet(t, "the VIP back", func(r []bgp.Route) bool { return len(r) == 1 })
}

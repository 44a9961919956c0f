package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/types"
)

// These tests drive a Runner as merlin does: Offer updates, Run, and watch
// its status; the kernel is the fake table (the VM tests run the same
// runner on a real one).

type testNode struct {
	*Runner
	reg *prometheus.Registry
}

func newTestRunner(t *testing.T, cfg RunnerConfig, deps RunnerDeps) testNode {
	t.Helper()
	if cfg.OwnershipFile == "" {
		cfg.OwnershipFile = filepath.Join(t.TempDir(), "owned.json")
	}
	cfg.Node = "n1"
	reg := prometheus.NewRegistry()
	deps.Metrics, deps.Log = NewNodeMetrics(reg), discardLogger()
	r, err := NewRunner(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	return testNode{Runner: r, reg: reg}
}

// start runs the runner until the test ends.
func (n testNode) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
}

// waitFor waits until the node's status satisfies cond.
func (n testNode) waitFor(t *testing.T, what string, cond func(*types.NodeStatus) bool) *types.NodeStatus {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		st, changed := n.Status()
		if cond(st) {
			return st
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("no status with %s; last: %v", what, st)
		}
	}
}

// applied offers a full update at the state's revision and waits for a pass
// that completed it; passes is the passes-run counter before.
func (n testNode) apply(t *testing.T, st *store.State) *types.NodeStatus {
	t.Helper()
	before := n.passes(t)
	n.Offer(st.FullUpdate())
	return n.waitFor(t, "the revision applied", func(s *types.NodeStatus) bool {
		return s.AppliedRevision == st.Revision && n.passes(t) > before
	})
}

func (n testNode) passes(t *testing.T) int {
	t.Helper()
	return int(n.metric(t, "merlin_reconcile_duration_seconds", nil))
}

// metric sums the series of a metric the node serves on /metrics whose
// labels include the given ones (a histogram counts its observations).
func (n testNode) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	total := 0.0
	for _, mf := range scrape(t, n.reg, n.Runner) {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue series
				}
			}
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

// serversUp is merlin_server_up as the node serves it, by "service server".
func (n testNode) serversUp(t *testing.T) map[string]float64 {
	t.Helper()
	up := map[string]float64{}
	for _, mf := range scrape(t, n.reg, n.Runner) {
		if mf.GetName() == "merlin_server_up" {
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, lp := range m.GetLabel() {
					labels[lp.GetName()] = lp.GetValue()
				}
				up[labels["service"]+" "+labels["server"]] = m.GetGauge().GetValue()
			}
		}
	}
	return up
}

// scrape is what MetricsHandler serves for reg and writers, parsed (a
// family written twice does not parse), sorted by name.
func scrape(t *testing.T, reg prometheus.Gatherer, writers ...MetricsWriter) []*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	MetricsHandler(reg, writers...).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	out := make([]*dto.MetricFamily, 0, len(families))
	for _, name := range slices.Sorted(maps.Keys(families)) {
		out = append(out, families[name])
	}
	return out
}

func errorIDs(st *types.NodeStatus) []string {
	var ids []string
	for _, e := range st.Errors {
		ids = append(ids, e.ServiceId+"/"+e.Server)
	}
	return ids
}

func TestRunnerReconciles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	table := newFakeTable()
	// A foreign service that must survive everything.
	foreign := ipvs.ServiceKey{Protocol: ipvs.TCP, Address: mustAddr("198.18.9.9"), Port: 80}.Canonical()
	_ = table.Apply(ctx, []ipvs.Op{{Kind: ipvs.OpAddService, Service: ipvs.Service{Key: foreign, Config: ipvs.ServiceConfig{Scheduler: "rr"}}}})
	cfg := RunnerConfig{OwnershipFile: filepath.Join(dir, "owned.json")}
	a := newTestRunner(t, cfg, RunnerDeps{IPVS: table})
	a.start(t)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"), svcAt("broken", "198.18.0.3", "twos"), svcAt("clash", "198.18.9.9", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	withServer(t, st, "web", "198.19.0.2:8080", 2)
	status := a.apply(t, st)
	if len(table.svcs) != 3 || len(table.svcs[ServiceKeyOf(st.Services["web"].Service)].Destinations) != 2 {
		t.Fatalf("kernel after the first pass: %v", table.svcs)
	}
	if ids := errorIDs(status); !slices.Equal(ids, []string{"broken/", "clash/"}) {
		t.Fatalf("object errors %v", ids)
	}

	// Nothing changed: no writes (the refused objects wait for their backoff).
	w0, _ := table.counts()
	st.Revision = 11
	a.apply(t, st)
	if w1, _ := table.counts(); w1 != w0 {
		t.Fatalf("a no-op pass wrote %d ops", w1-w0)
	}

	// A weight change is one update.
	st2 := st.Clone()
	st2.Revision = 12
	withServer(t, st2, "web", "198.19.0.1:8080", 0)
	w0, _ = table.counts()
	a.apply(t, st2)
	if w1, _ := table.counts(); w1-w0 != 1 {
		t.Fatalf("a weight change wrote %d ops, want 1", w1-w0)
	}

	// A fresh runner (a restart) with nothing changed writes nothing but
	// the one retry of the service the kernel refuses.
	b := newTestRunner(t, cfg, RunnerDeps{IPVS: table})
	b.start(t)
	w0, _ = table.counts()
	b.apply(t, st2)
	if w1, _ := table.counts(); w1-w0 != 1 {
		t.Fatalf("restart wrote %d ops, want 1 (the refused service)", w1-w0)
	}

	// Wiping the desired state is held back by the deletion guard.
	st2.Revision = 13
	for i := range 4 {
		id := "extra" + string(rune('a'+i))
		st2.Services[id] = &store.ServiceState{Service: mustNormal(t, svcAt(id, "198.18.1."+string(rune('1'+i)), "rr")), Servers: map[string]*types.RealServer{}}
	}
	b.apply(t, st2)
	empty := testState(t)
	empty.Revision = 20
	b.Offer(empty.FullUpdate())
	b.waitFor(t, "a held deletion", func(s *types.NodeStatus) bool {
		return s.DeletionGuard.GetHeld() && s.DeletionGuard.GetRevision() == 20
	})
	if len(table.svcs) != 7 {
		t.Fatalf("mass deletion not held: %d services left", len(table.svcs))
	}
	empty.Revision, empty.ConfirmedDeletions = 21, 20
	b.apply(t, empty)
	if len(table.svcs) != 1 || table.svcs[foreign] == nil {
		t.Fatalf("after confirmation: %v", table.svcs)
	}
}

func healthChecked(t *testing.T, slowStart time.Duration) *store.State {
	svc := svcAt("web", "198.18.0.1", "wrr")
	svc.Defaults = &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{
		Endpoint: wrapperspb.String("tcp://:8099"), Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second),
		UpThreshold: 1, DownThreshold: 1, SlowStart: durationpb.New(slowStart)}}
	st := testState(t, svc)
	withServer(t, st, "web", "198.19.0.1:8080", 10)
	return st
}

func TestRunnerHealthWeights(t *testing.T) {
	// In a bubble the slow start's clock is the test's: the ramp is
	// exact and takes no time, whatever the machine's load.
	synctest.Test(t, func(t *testing.T) {
		table := newFakeTable()
		mon := newFakeMonitor()
		a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: table, Health: mon})
		a.start(t)
		st := healthChecked(t, 2*time.Second)
		a.apply(t, st)
		key := ServiceKeyOf(st.Services["web"].Service)
		weight := func() uint32 {
			table.mu.Lock()
			defer table.mu.Unlock()
			return table.svcs[key].Destinations[0].Config.Weight
		}
		if len(mon.wanted()) != 1 || weight() != 10 {
			t.Fatalf("checks %v, weight %d", mon.wanted(), weight())
		}
		// Down: weight 0, reported.
		w0, _ := table.counts()
		mon.force(false, time.Now())
		status := a.waitFor(t, "the server down", func(s *types.NodeStatus) bool { return len(s.Servers) == 1 && !s.Servers[0].Up })
		if w1, _ := table.counts(); weight() != 0 || w1-w0 != 1 || !slices.Equal(status.ServicesDown, []string{"web"}) {
			t.Fatalf("down: weight %d after %d ops, status %v", weight(), w1-w0, status)
		}
		if up := a.serversUp(t); !maps.Equal(up, map[string]float64{"web 198.19.0.1:8080": 0}) {
			t.Fatalf("down: merlin_server_up %v", up)
		}
		// Up again half-way into its slow start: part of the weight, then all
		// of it without any further news.
		mon.force(true, time.Now().Add(-time.Second))
		a.waitFor(t, "the server ramping", func(s *types.NodeStatus) bool {
			return len(s.Servers) == 1 && s.Servers[0].Up && s.Servers[0].EffectiveWeight > 0 && s.Servers[0].EffectiveWeight < 10
		})
		a.waitFor(t, "the full weight", func(s *types.NodeStatus) bool { return s.Servers[0].EffectiveWeight == 10 })
		if up := a.serversUp(t); weight() != 10 || !maps.Equal(up, map[string]float64{"web 198.19.0.1:8080": 1}) {
			t.Fatalf("after slow start: weight %d, merlin_server_up %v", weight(), up)
		}
	})
}

// A restart never changes a weight the kernel already has: a server that
// merlin had taken down stays down until its check says otherwise, even
// when it shares the check with a server at weight 0.
func TestRunnerRestartKeepsDownedServersDown(t *testing.T) {
	table := newFakeTable()
	dir := t.TempDir()
	st := healthChecked(t, 0)
	withServer(t, st, "web", "198.19.0.1:8081", 0) // same check target (:8099), configured weight 0
	mon := newFakeMonitor()
	cfg := RunnerConfig{OwnershipFile: filepath.Join(dir, "owned.json")}
	a := newTestRunner(t, cfg, RunnerDeps{IPVS: table, Health: mon})
	a.start(t)
	a.apply(t, st)
	mon.force(false, time.Now())
	a.waitFor(t, "the server down", func(s *types.NodeStatus) bool { return len(s.ServicesDown) == 1 })

	restarted := newTestRunner(t, cfg, RunnerDeps{IPVS: table, Health: newFakeMonitor()}) // knows no results yet
	restarted.start(t)
	w0, _ := table.counts()
	restarted.apply(t, st)
	if w1, _ := table.counts(); w1 != w0 {
		t.Fatalf("the restart wrote %d ops (a weight changed)", w1-w0)
	}
}

// A restart starts every check where merlin had decided it was: a weight
// raised 0 → 7 while merlin was down does not read as merlin's own
// health-down, so neither that server nor the serving ones sharing its
// check lose their weight (issue: two serving servers and a whole service
// went to 0 for one up-threshold after a restart); a check merlin had
// taken down stays down across the restart.
func TestRunnerRestartStartsChecksWhereTheyWere(t *testing.T) {
	for _, up := range []bool{true, false} {
		t.Run(fmt.Sprintf("check up %v", up), func(t *testing.T) {
			table := newFakeTable()
			dir := t.TempDir()
			cfg := RunnerConfig{OwnershipFile: filepath.Join(dir, "owned.json"), CheckStateFile: filepath.Join(dir, "checks.json")}
			st := healthChecked(t, 0)
			withServer(t, st, "web", "198.19.0.1:8081", 0) // the same check (its target is the address)
			mon := newFakeMonitor()
			a := newTestRunner(t, cfg, RunnerDeps{IPVS: table, Health: mon})
			ctx, stop := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			a.apply(t, st)
			mon.force(up, time.Now())
			a.waitFor(t, "the check's state applied", func(s *types.NodeStatus) bool { return len(s.Servers) == 2 && s.Servers[0].Up == up })
			stop() // as a SIGKILL: the kernel keeps what it has
			<-done

			raised := st.Clone()
			raised.Revision++
			withServer(t, raised, "web", "198.19.0.1:8081", 7)
			restarted := newTestRunner(t, cfg, RunnerDeps{IPVS: table, Health: newFakeMonitor()}) // knows no results yet
			restarted.start(t)
			w0, _ := table.counts()
			restarted.apply(t, raised)
			w1, _ := table.counts()
			key := ServiceKeyOf(raised.Services["web"].Service)
			weights := map[uint16]uint32{}
			table.mu.Lock()
			for _, d := range table.svcs[key].Destinations {
				weights[d.Key.Port] = d.Config.Weight
			}
			table.mu.Unlock()
			want, writes := map[uint16]uint32{8080: 10, 8081: 7}, 1 // only the raise
			if !up {
				want, writes = map[uint16]uint32{8080: 0, 8081: 0}, 0 // still down: nothing to write
			}
			if !maps.Equal(weights, want) || w1-w0 != writes {
				t.Fatalf("after the restart: weights %v with %d writes, want %v with %d", weights, w1-w0, want, writes)
			}
		})
	}
}

func TestRunnerBackgroundResyncRepairs(t *testing.T) {
	table := newFakeTable()
	a := newTestRunner(t, RunnerConfig{ResyncPeriod: 20 * time.Millisecond}, RunnerDeps{IPVS: table})
	a.start(t)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 3)
	a.apply(t, st)
	web := ServiceKeyOf(st.Services["web"].Service)
	api := ServiceKeyOf(st.Services["api"].Service)
	// Behind merlin's back: one service deleted, one weight changed.
	table.mu.Lock()
	delete(table.svcs, api)
	table.svcs[web].Destinations[0].Config.Weight = 9
	table.mu.Unlock()
	resyncs := a.metric(t, "merlin_resyncs_total", nil)
	deadline := time.Now().Add(10 * time.Second)
	for {
		table.mu.Lock()
		repaired := table.svcs[api] != nil && table.svcs[web].Destinations[0].Config.Weight == 3
		table.mu.Unlock()
		if repaired && a.metric(t, "merlin_resyncs_total", nil) > resyncs {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not repaired: %v", table.svcs)
		}
		time.Sleep(10 * time.Millisecond) // polling the fake kernel for the repair
	}
}

// Updates from the watcher carry only what changed; the runner merges the
// ones it has not taken yet and looks at nothing else.
func TestRunnerMergesUpdates(t *testing.T) {
	table := newFakeTable()
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: table})
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"), svcAt("db", "198.18.0.3", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	withServer(t, st, "api", "198.19.0.2:8080", 1)
	// Three updates before the runner runs: everything, a weight change,
	// then api deleted.
	st2 := st.Clone()
	withServer(t, st2, "web", "198.19.0.1:8080", 7)
	a.Offer(st.FullUpdate())
	a.Offer(&store.Update{Revision: 11, Services: map[string]*store.ServiceState{"web": st2.Services["web"]}, Invalid: map[string]string{}})
	a.Offer(&store.Update{Revision: 12, Services: map[string]*store.ServiceState{"api": nil}, Invalid: map[string]string{}})
	a.start(t)
	a.waitFor(t, "revision 12", func(s *types.NodeStatus) bool { return s.AppliedRevision == 12 })
	if w, _ := table.counts(); w != 3 { // the merged result only: web with its server at weight 7, and db
		t.Fatalf("%d ops, want 3", w)
	}
	web := table.svcs[ServiceKeyOf(st.Services["web"].Service)]
	if _, ok := table.svcs[ServiceKeyOf(st.Services["api"].Service)]; ok || len(table.svcs) != 2 || web.Destinations[0].Config.Weight != 7 {
		t.Fatalf("kernel: %v", table.svcs)
	}
	if d := a.Desired(); d.Revision != 12 || len(d.Services) != 2 || d.Services["web"] != st2.Services["web"] {
		t.Fatalf("desired: %v", d)
	}
	// An update naming an unchanged service writes nothing; a full one
	// after a delta replaces it.
	w0, _ := table.counts()
	before := a.passes(t)
	a.Offer(&store.Update{Revision: 13, Services: map[string]*store.ServiceState{"db": st2.Services["db"]}, Invalid: map[string]string{}})
	a.waitFor(t, "revision 13", func(s *types.NodeStatus) bool { return s.AppliedRevision == 13 && a.passes(t) > before })
	if w1, _ := table.counts(); w1 != w0 {
		t.Fatalf("an unchanged service wrote %d ops", w1-w0)
	}
	st.Revision = 14
	a.apply(t, st) // a re-list: web back at weight 1, api back, db kept
	if len(table.svcs) != 3 || table.svcs[ServiceKeyOf(st.Services["web"].Service)].Destinations[0].Config.Weight != 1 {
		t.Fatalf("kernel after the full update: %v", table.svcs)
	}
}

// Deleting what someone already deleted behind merlin's back reaches the
// desired state: no error stays, and the node goes quiet.
func TestRunnerDeleteAlreadyGone(t *testing.T) {
	table := newFakeTable()
	// Background reads wait until the deletions are done, so that none
	// repairs what was removed behind merlin's back first.
	reads := gatedReader{fakeTable: table, open: make(chan struct{})}
	a := newTestRunner(t, RunnerConfig{RetryBackoff: 10 * time.Millisecond, ResyncPeriod: 30 * time.Millisecond}, RunnerDeps{IPVS: table, Reader: reads})
	a.start(t)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	withServer(t, st, "web", "198.19.0.2:8080", 1)
	a.apply(t, st)
	web, api := ServiceKeyOf(st.Services["web"].Service), ServiceKeyOf(st.Services["api"].Service)
	table.mu.Lock() // ipvsadm -d and -D
	table.svcs[web].Destinations = table.svcs[web].Destinations[:1]
	delete(table.svcs, api)
	table.mu.Unlock()

	gone := testState(t, svcAt("web", "198.18.0.1", "wrr"))
	gone.Revision = 11
	withServer(t, gone, "web", "198.19.0.1:8080", 1)
	status := a.apply(t, gone)
	if len(status.Errors) != 0 || status.LastResult != "ok" {
		t.Fatalf("status after deleting what was gone: %v", status)
	}
	table.mu.Lock()
	missed := table.gone
	table.mu.Unlock()
	if missed != 2 {
		t.Fatalf("%d deletes found nothing, want 2 (the server and the service)", missed)
	}
	close(reads.open)
	a.waitQuiet(t)
}

// gatedReader's reads of the table wait until open is closed.
type gatedReader struct {
	*fakeTable
	open chan struct{}
}

func (g gatedReader) Table(ctx context.Context) ([]ipvs.VirtualServer, error) {
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.fakeTable.Table(ctx)
}

// waitQuiet checks that a node with nothing to do runs no passes but the
// one after each background resync (with ResyncPeriod short), counted over
// three resyncs: a retry that is never due again, or due in the past,
// would make it spin.
func (n testNode) waitQuiet(t *testing.T) {
	t.Helper()
	resyncs, passes := n.metric(t, "merlin_resyncs_total", nil), n.passes(t)
	for deadline := time.Now().Add(10 * time.Second); n.metric(t, "merlin_resyncs_total", nil) < resyncs+3; {
		if time.Now().After(deadline) {
			t.Fatal("no background resyncs")
		}
		time.Sleep(5 * time.Millisecond) // polling the counter
	}
	if extra := float64(n.passes(t)-passes) - (n.metric(t, "merlin_resyncs_total", nil) - resyncs); extra > 1 {
		t.Fatalf("%v passes beyond one per resync on a node with nothing to do", extra)
	}
}

// flakySink fails its first n updates.
type flakySink struct {
	mu   sync.Mutex
	n    int
	last []netip.Addr
}

func (f *flakySink) SetVIPs(_ context.Context, vips []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n > 0 {
		f.n--
		return errors.New("interface is gone")
	}
	f.last = vips
	return nil
}

// A failing sink is reported on its own, retried with backoff, and holds
// up neither IPVS nor the other sinks.
func TestRunnerSinkFailsAlone(t *testing.T) {
	// In a bubble the backoff's clock is the test's.
	synctest.Test(t, func(t *testing.T) {
		table := newFakeTable()
		flaky, good := &flakySink{n: 2}, &flakySink{}
		a := newTestRunner(t, RunnerConfig{RetryBackoff: 20 * time.Millisecond},
			RunnerDeps{IPVS: table, Sinks: []Sink{NewVIPSink(flaky), &namedSink{Sink: NewVIPSink(good), name: "other"}}})
		a.start(t)
		st := testState(t, svcAt("web", "198.18.0.1", "wrr"))
		a.Offer(st.FullUpdate())
		failing := a.waitFor(t, "the failing sink", func(s *types.NodeStatus) bool {
			return len(s.Sinks) == 3 && !s.Sinks[1].Ok && s.AppliedRevision == 10
		})
		if !failing.Sinks[0].Ok || !failing.Sinks[2].Ok || failing.Sinks[1].Error != "interface is gone" || len(table.svcs) != 1 {
			t.Fatalf("status %v; kernel %v", failing.Sinks, table.svcs)
		}
		if up := a.metric(t, "merlin_sink_up", map[string]string{"sink": "vips"}); up != 0 {
			t.Fatalf("merlin_sink_up{sink=vips} = %v while failing", up)
		}
		a.waitFor(t, "the sink recovered", func(s *types.NodeStatus) bool { return s.Sinks[1].Ok })
		if !slices.Equal(flaky.last, []netip.Addr{mustAddr("198.18.0.1")}) || !slices.Equal(good.last, flaky.last) {
			t.Fatalf("VIPs %v and %v", flaky.last, good.last)
		}
	})
}

type namedSink struct {
	Sink
	name string
}

func (n *namedSink) Name() string { return n.name }

// Nothing is served before the first reconcile and the first health
// results: the VIP shows as not ready until the checks settle.
func TestRunnerNotReadyUntilChecksSettle(t *testing.T) {
	mon := newFakeMonitor()
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: newFakeTable(), Health: mon})
	a.start(t)
	st := healthChecked(t, 0)
	status := a.apply(t, st)
	if status.VipsServing != 0 || len(status.VipsNotServing) != 1 || status.VipsNotServing[0].State != string(VIPNotReady) {
		t.Fatalf("before results: %v", status)
	}
	mon.settle()
	a.waitFor(t, "the VIP served", func(s *types.NodeStatus) bool { return s.VipsServing == 1 && len(s.VipsNotServing) == 0 })
	mon.force(false, time.Now())
	status = a.waitFor(t, "the VIP without a healthy server", func(s *types.NodeStatus) bool { return len(s.VipsNotServing) == 1 })
	if v := status.VipsNotServing[0]; v.State != string(VIPNoHealthyServer) || v.Address != "198.18.0.1" || !slices.Equal(v.Services, []string{"web"}) {
		t.Fatalf("VIP state %v", v)
	}
}

var _ HealthMonitor = (*health.Monitor)(nil)

// A server whose health check cannot be built is an error of that server
// in status; the rest of the service applies.
func TestRunnerReportsBadCheckPerServer(t *testing.T) {
	table := newFakeTable()
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: table, Health: newFakeMonitor()})
	a.start(t)
	st := healthChecked(t, 0)
	withServer(t, st, "web", "198.19.0.2:8080", 1)
	ss := st.Services["web"]
	bad := proto.Clone(ss.Servers["198.19.0.2:8080"]).(*types.RealServer)
	bad.HealthCheck = &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("tcp://[::1")}
	ss.Servers["198.19.0.2:8080"] = bad
	status := a.apply(t, st)
	if ids := errorIDs(status); !slices.Equal(ids, []string{"web/198.19.0.2:8080"}) || len(table.svcs) != 1 {
		t.Fatalf("errors %v, kernel %v", ids, table.svcs)
	}
}

// A change to what was removed behind merlin's back puts it back at once,
// without waiting for a resync: the kernel's "no such service" or "no such
// destination" corrects the model.
func TestRunnerRecreatesWhatTheKernelLost(t *testing.T) {
	table := newFakeTable()
	a := newTestRunner(t, RunnerConfig{ResyncPeriod: time.Hour}, RunnerDeps{IPVS: table})
	a.start(t)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	withServer(t, st, "web", "198.19.0.2:8080", 1)
	withServer(t, st, "api", "198.19.0.3:8080", 1)
	a.apply(t, st)
	web, api := ServiceKeyOf(st.Services["web"].Service), ServiceKeyOf(st.Services["api"].Service)
	table.mu.Lock() // ipvsadm -d of one web server, -D of api
	table.svcs[web].Destinations = table.svcs[web].Destinations[1:]
	delete(table.svcs, api)
	table.mu.Unlock()

	st2 := st.Clone()
	st2.Revision = 11
	withServer(t, st2, "web", "198.19.0.1:8080", 4)
	withServer(t, st2, "api", "198.19.0.3:8080", 4)
	a.Offer(st2.FullUpdate())
	a.waitFor(t, "both repaired", func(s *types.NodeStatus) bool {
		table.mu.Lock()
		defer table.mu.Unlock()
		return s.AppliedRevision == 11 && len(s.Errors) == 0 && table.svcs[api] != nil && len(table.svcs[api].Destinations) == 1 &&
			len(table.svcs[web].Destinations) == 2 && table.svcs[api].Destinations[0].Config.Weight == 4
	})
}

// A restart during a slow start writes nothing: the ramp goes on from the
// kernel's weight.
func TestRunnerRestartMidSlowStart(t *testing.T) {
	table := newFakeTable()
	cfg := RunnerConfig{OwnershipFile: filepath.Join(t.TempDir(), "owned.json")}
	st := healthChecked(t, time.Hour) // a ramp far longer than the test
	mon := newFakeMonitor()
	a := newTestRunner(t, cfg, RunnerDeps{IPVS: table, Health: mon})
	a.start(t)
	a.apply(t, st)
	mon.force(true, time.Now().Add(-20*time.Minute)) // a third of the way up
	a.waitFor(t, "the ramp", func(s *types.NodeStatus) bool { return len(s.Servers) == 1 && s.Servers[0].EffectiveWeight == 3 })

	restarted := newTestRunner(t, cfg, RunnerDeps{IPVS: table, Health: newFakeMonitor()})
	restarted.start(t)
	w0, _ := table.counts()
	status := restarted.apply(t, st)
	if w1, _ := table.counts(); w1 != w0 || status.Servers[0].EffectiveWeight != 3 {
		t.Fatalf("the restart wrote %d ops; weight %d", w1-w0, status.Servers[0].EffectiveWeight)
	}
}

// An error whose object the kernel holds as desired after all (repaired
// by hand) goes away at the next pass, not at its next retry.
func TestRunnerClearsErrorsThatNoLongerApply(t *testing.T) {
	table := newFakeTable()
	table.refuse = func(op ipvs.Op) error {
		if op.Kind == ipvs.OpUpdateDestination && op.Destination.Config.Weight == 7 {
			return unix.EINVAL
		}
		return nil
	}
	a := newTestRunner(t, RunnerConfig{RetryBackoff: time.Hour, MaxRetryBackoff: time.Hour, ResyncPeriod: 20 * time.Millisecond}, RunnerDeps{IPVS: table})
	a.start(t)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	a.apply(t, st)
	st.Revision = 11
	withServer(t, st, "web", "198.19.0.1:8080", 7)
	a.Offer(st.FullUpdate())
	a.waitFor(t, "the refused weight", func(s *types.NodeStatus) bool { return slices.Equal(errorIDs(s), []string{"web/198.19.0.1:8080"}) })
	table.mu.Lock() // ipvsadm -e ... -w 7 by hand
	table.svcs[ServiceKeyOf(st.Services["web"].Service)].Destinations[0].Config.Weight = 7
	table.mu.Unlock()
	a.waitFor(t, "the error cleared", func(s *types.NodeStatus) bool { return len(s.Errors) == 0 })
}

// Background resyncs of an unchanged kernel write nothing, also with a
// service the kernel refuses waiting for its retry.
func TestRunnerResyncWritesNothing(t *testing.T) {
	table := newFakeTable()
	a := newTestRunner(t, RunnerConfig{ResyncPeriod: 20 * time.Millisecond}, RunnerDeps{IPVS: table})
	a.start(t)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("broken", "198.18.0.3", "twos"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	a.apply(t, st)
	w0, _ := table.counts()
	a.waitQuiet(t)
	if w1, _ := table.counts(); w1 != w0 {
		t.Fatalf("resyncs wrote %d ops", w1-w0)
	}
}

// A kernel dump that misses a service (the kernel resumes a dump by
// position, so a deletion during it can hide another service) neither
// makes merlin recreate it nor lose it: the dump is confirmed service by
// service, and an add that finds the service already there learns it back
// and keeps it merlin's.
func TestRunnerSurvivesADumpThatHidesAService(t *testing.T) {
	table := newFakeTable()
	a := newTestRunner(t, RunnerConfig{ResyncPeriod: 20 * time.Millisecond}, RunnerDeps{IPVS: table})
	a.start(t)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	a.apply(t, st)
	web := ServiceKeyOf(st.Services["web"].Service)
	for _, hides := range []int{1, 2} { // the dump alone; the dump and its confirmation
		table.mu.Lock()
		table.hide = map[ipvs.ServiceKey]int{web: hides}
		table.mu.Unlock()
		a.waitQuiet(t) // three resyncs later, and no spin
		table.mu.Lock()
		left := table.hide[web]
		table.mu.Unlock()
		status, _ := a.Status()
		if left != 0 || len(status.Errors) != 0 || status.OwnedServices != 2 || len(table.svcs) != 2 {
			t.Fatalf("after a dump that hid web %d times: %d hides left, errors %v, owned %d, kernel %v", hides, left, errorIDs(status), status.OwnedServices, table.svcs)
		}
	}
	// Still merlin's: a change to it applies.
	st.Revision = 11
	withServer(t, st, "web", "198.19.0.1:8080", 5)
	a.apply(t, st)
	table.mu.Lock()
	defer table.mu.Unlock()
	if w := table.svcs[web].Destinations[0].Config.Weight; w != 5 {
		t.Fatalf("weight %d after the change", w)
	}
}

// setCounting counts the check sets the runner hands the monitor.
type setCounting struct {
	*fakeMonitor
	sets atomic.Int32
}

func (s *setCounting) Set(want map[health.Check]bool) {
	s.sets.Add(1)
	s.fakeMonitor.Set(want)
}

// A weight change moves the kernel weights the checks were planned with,
// not the checks: the monitor is not handed the node's checks again (with
// 100,000 of them, a walk and a sort per change).
func TestWeightChangeKeepsTheMonitorsChecks(t *testing.T) {
	table := newFakeTable()
	mon := &setCounting{fakeMonitor: newFakeMonitor()}
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: table, Health: mon})
	a.start(t)
	st := healthChecked(t, 0)
	a.apply(t, st)
	mon.settle()
	a.waitFor(t, "the server up", func(s *types.NodeStatus) bool { return len(s.Servers) == 1 && s.Servers[0].Up })
	sets := mon.sets.Load()
	for _, w := range []uint32{20, 0, 30} {
		st = st.Clone()
		st.Revision++
		withServer(t, st, "web", "198.19.0.1:8080", w)
		a.apply(t, st)
		key := ServiceKeyOf(st.Services["web"].Service)
		table.mu.Lock()
		got := table.svcs[key].Destinations[0].Config.Weight
		table.mu.Unlock()
		if got != w {
			t.Fatalf("kernel weight %d, want %d", got, w)
		}
	}
	if n := mon.sets.Load(); n != sets {
		t.Fatalf("the monitor was given the checks %d more times by weight changes", n-sets)
	}
}

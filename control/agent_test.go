package control

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// fakeTable is an in-memory IPVS table with the kernel's error rules; the
// real kernel runs the same agent in the VM tests.
type fakeTable struct {
	mu     sync.Mutex
	svcs   map[ipvs.ServiceKey]*ipvs.VirtualServer
	writes int
	reads  int
}

func newFakeTable() *fakeTable { return &fakeTable{svcs: map[ipvs.ServiceKey]*ipvs.VirtualServer{}} }

func (f *fakeTable) Table(context.Context) ([]ipvs.VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	var out []ipvs.VirtualServer
	for _, vs := range f.svcs {
		c := *vs
		c.Destinations = slices.Clone(vs.Destinations)
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeTable) Apply(_ context.Context, ops []ipvs.Op) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	be := &ipvs.BatchError{Total: len(ops)}
	for i, op := range ops {
		f.writes++
		k := op.Service.Key.Canonical()
		vs := f.svcs[k]
		var err error
		switch op.Kind {
		case ipvs.OpAddService:
			switch {
			case vs != nil:
				err = unix.EEXIST
			case op.Service.Config.Scheduler == "twos":
				err = unix.ENOENT // pretend this scheduler's module is missing
			default:
				f.svcs[k] = &ipvs.VirtualServer{Service: ipvs.Service{Key: k, Config: op.Service.Config}}
			}
		case ipvs.OpUpdateService:
			if vs == nil {
				err = unix.ESRCH
			} else {
				vs.Service.Config = op.Service.Config
			}
		case ipvs.OpDeleteService:
			if vs == nil {
				err = unix.ESRCH
			}
			delete(f.svcs, k)
		default:
			if vs == nil {
				err = unix.ESRCH
				break
			}
			i := slices.IndexFunc(vs.Destinations, func(d ipvs.Destination) bool { return d.Key == op.Destination.Key })
			switch {
			case op.Kind == ipvs.OpAddDestination && i >= 0:
				err = unix.EEXIST
			case op.Kind == ipvs.OpAddDestination:
				vs.Destinations = append(vs.Destinations, op.Destination)
			case i < 0:
				err = unix.ENOENT
			case op.Kind == ipvs.OpUpdateDestination:
				vs.Destinations[i] = op.Destination
			default:
				vs.Destinations = slices.Delete(vs.Destinations, i, i+1)
			}
		}
		if err != nil {
			be.Failed = append(be.Failed, &ipvs.OpError{Index: i, Op: op, Err: err})
		}
	}
	if len(be.Failed) > 0 {
		return be
	}
	return nil
}

func (f *fakeTable) counts() (writes, reads int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes, f.reads
}

func testState(t *testing.T, services ...*types.VirtualService) *State {
	t.Helper()
	st := newState("/merlin", 10)
	for _, svc := range services {
		n, err := model.NormalizeService(svc)
		if err != nil {
			t.Fatal(err)
		}
		st.Services[n.Id] = &ServiceState{Service: n, Servers: map[string]*types.RealServer{}}
	}
	return st
}

func withServer(t *testing.T, st *State, id, addr string, weight uint32) {
	t.Helper()
	ss := st.Services[id]
	ip, port, _ := strings.Cut(addr, ":")
	p := map[string]uint32{"80": 80, "8080": 8080}[port]
	srv, err := model.NormalizeServer(&types.RealServer{ServiceID: id, Key: &types.RealServer_Key{Ip: ip, Port: p},
		Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(weight), Forward: types.ForwardMethod_MASQ}}, ss.Service)
	if err != nil {
		t.Fatal(err)
	}
	servers := map[string]*types.RealServer{}
	for k, v := range ss.Servers {
		servers[k] = v
	}
	servers[model.ServerKeyString(srv.Key)] = srv
	st.Services[id] = &ServiceState{Service: ss.Service, Servers: servers}
}

func svcAt(id, ip string, sched string) *types.VirtualService {
	return &types.VirtualService{Id: id, Key: &types.VirtualService_Key{Ip: ip, Port: 80, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: sched}}
}

func newTestAgent(t *testing.T, table IPVS, dir string) *Agent {
	t.Helper()
	a, err := NewAgent(AgentConfig{Node: "n1", OwnershipFile: filepath.Join(dir, "owned.json")}, table, nil, nil, nil, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAgentReconciles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	table := newFakeTable()
	// A foreign service that must survive everything.
	foreign := ipvs.ServiceKey{Protocol: ipvs.TCP, Address: mustAddr("198.18.9.9"), Port: 80}.Canonical()
	_ = table.Apply(ctx, []ipvs.Op{{Kind: ipvs.OpAddService, Service: ipvs.Service{Key: foreign, Config: ipvs.ServiceConfig{Scheduler: "rr"}}}})

	a := newTestAgent(t, table, dir)
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"), svcAt("broken", "198.18.0.3", "twos"), svcAt("clash", "198.18.9.9", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	withServer(t, st, "web", "198.19.0.2:8080", 2)
	a.pass(ctx, st, nil, true)
	status, _ := a.Status()
	if len(table.svcs) != 3 || len(table.svcs[ServiceKeyOf(st.Services["web"].Service)].Destinations) != 2 {
		t.Fatalf("kernel after first pass: %v", table.svcs)
	}
	var errs []string
	for _, e := range status.Errors {
		errs = append(errs, e.ServiceId)
	}
	if !slices.Equal(errs, []string{"broken", "clash"}) || status.AppliedRevision != 10 {
		t.Fatalf("status: %v", status)
	}

	// Nothing changed: no writes, by event or by resync.
	w0, _ := table.counts()
	a.pass(ctx, st, nil, false)
	a.pass(ctx, st, nil, true)
	if w1, _ := table.counts(); w1 != w0 { // the refused objects wait for their backoff
		t.Fatalf("no-op passes wrote %d ops", w1-w0)
	}

	// A weight change is one update.
	st2 := st.Clone()
	withServer(t, st2, "web", "198.19.0.1:8080", 0)
	w0, _ = table.counts()
	a.pass(ctx, st2, nil, false)
	if w1, _ := table.counts(); w1-w0 != 1 {
		t.Fatalf("weight change wrote %d ops, want 1", w1-w0)
	}

	// A fresh agent (restart) with nothing changed writes nothing but the
	// one retry of the service the kernel refuses.
	b := newTestAgent(t, table, dir)
	w0, _ = table.counts()
	b.pass(ctx, st2, nil, true)
	if w1, _ := table.counts(); w1-w0 != 1 {
		t.Fatalf("restart wrote %d ops, want 1 (the refused service)", w1-w0)
	}

	// Wiping the desired state is held back by the deletion guard.
	for i := range 4 {
		st2.Services["extra"+string(rune('a'+i))] = &ServiceState{Service: mustNormal(t, svcAt("extra"+string(rune('a'+i)), "198.18.1."+string(rune('1'+i)), "rr")), Servers: map[string]*types.RealServer{}}
	}
	b.pass(ctx, st2, nil, false)
	empty := testState(t)
	empty.Revision = 20
	b.pass(ctx, empty, nil, false)
	if len(table.svcs) != 7 {
		t.Fatalf("mass deletion not held: %d services left", len(table.svcs))
	}
	status, _ = b.Status()
	if status.DeletionGuard == nil || !status.DeletionGuard.Held || status.DeletionGuard.Revision != 20 {
		t.Fatalf("guard status: %v", status.DeletionGuard)
	}
	empty.ConfirmedDeletions = 20
	b.pass(ctx, empty, nil, false)
	if len(table.svcs) != 1 || table.svcs[foreign] == nil {
		t.Fatalf("after confirmation: %v", table.svcs)
	}
}

func mustNormal(t *testing.T, s *types.VirtualService) *types.VirtualService {
	n, err := model.NormalizeService(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type fakeMonitor struct {
	mu     sync.Mutex
	states map[health.Check]health.State
	set    map[health.Check]bool
	ch     chan struct{}
}

func (f *fakeMonitor) Set(want map[health.Check]bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.set = want
	for c, up := range want {
		if _, ok := f.states[c]; !ok {
			f.states[c] = health.State{Up: up, Since: time.Now()}
		}
	}
}

func (f *fakeMonitor) State(c health.Check) (health.State, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.states[c]
	return st, ok
}

func (f *fakeMonitor) Changes() <-chan struct{} { return f.ch }

func (f *fakeMonitor) force(up bool, since time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.states {
		f.states[c] = health.State{Up: up, Since: since, Transitioned: true}
	}
}

func TestAgentHealthWeights(t *testing.T) {
	ctx := context.Background()
	table := newFakeTable()
	mon := &fakeMonitor{states: map[health.Check]health.State{}, ch: make(chan struct{}, 1)}
	a, err := NewAgent(AgentConfig{Node: "n1", OwnershipFile: filepath.Join(t.TempDir(), "owned.json")}, table, nil, mon, nil, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	svc := svcAt("web", "198.18.0.1", "wrr")
	svc.Defaults = &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{
		Endpoint: wrapperspb.String("tcp://:8080"), Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second),
		UpThreshold: 1, DownThreshold: 1, SlowStart: durationpb.New(10 * time.Second)}}
	st := testState(t, svc)
	withServer(t, st, "web", "198.19.0.1:8080", 10)
	a.pass(ctx, st, nil, true)
	key := ServiceKeyOf(st.Services["web"].Service)
	weight := func() uint32 { return table.svcs[key].Destinations[0].Config.Weight }
	if len(mon.set) != 1 || weight() != 10 {
		t.Fatalf("checks %v, weight %d", mon.set, weight())
	}
	mon.force(false, time.Now())
	a.healthDirty.Store(true)
	w0, _ := table.counts()
	a.pass(ctx, st, nil, false)
	if w1, _ := table.counts(); weight() != 0 || w1-w0 != 1 {
		t.Fatalf("down: weight %d after %d ops", weight(), w1-w0)
	}
	status, _ := a.Status()
	if len(status.ServicesDown) != 1 || len(status.Servers) != 1 || status.Servers[0].Up {
		t.Fatalf("status: %v", status)
	}
	// Up again 5 s into a 10 s slow start: about half the weight, and a pass is due soon.
	mon.force(true, time.Now().Add(-5*time.Second))
	a.healthDirty.Store(true)
	next := a.pass(ctx, st, nil, false)
	if w := weight(); w < 4 || w > 6 || next.IsZero() {
		t.Fatalf("slow start: weight %d, next pass %v", w, next)
	}
	mon.force(true, time.Now().Add(-time.Minute))
	a.pass(ctx, st, nil, false)
	if weight() != 10 {
		t.Fatalf("after slow start: weight %d", weight())
	}
}

func TestAgentBackgroundResyncRepairs(t *testing.T) {
	ctx := context.Background()
	table := newFakeTable()
	a := newTestAgent(t, table, t.TempDir())
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 3)
	a.Offer(st.FullUpdate())
	a.pass(ctx, st, nil, true)
	web := ServiceKeyOf(st.Services["web"].Service)
	api := ServiceKeyOf(st.Services["api"].Service)
	// Behind merlin's back: one service deleted, one weight changed.
	table.mu.Lock()
	delete(table.svcs, api)
	table.svcs[web].Destinations[0].Config.Weight = 9
	table.mu.Unlock()
	a.startDriftCheck(ctx)
	a.applyDrift(<-a.driftDone)
	a.drifting = false
	w0, _ := table.counts()
	a.pass(ctx, st, nil, false)
	w1, _ := table.counts()
	if table.svcs[api] == nil || table.svcs[web].Destinations[0].Config.Weight != 3 || w1-w0 != 2 {
		t.Fatalf("not repaired with 2 ops (%d): %v", w1-w0, table.svcs)
	}
}

// Updates from the watcher carry only what changed; the agent merges the
// ones it has not taken yet and looks at nothing else.
func TestAgentAppliesUpdates(t *testing.T) {
	ctx := context.Background()
	table := newFakeTable()
	a := newTestAgent(t, table, t.TempDir())
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"), svcAt("db", "198.18.0.3", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	withServer(t, st, "api", "198.19.0.2:8080", 1)
	step := func(wantOps int) {
		t.Helper()
		w0, _ := table.counts()
		desired, changed := a.takeUpdate()
		a.pass(ctx, desired, changed, false)
		if w1, _ := table.counts(); w1-w0 != wantOps {
			t.Fatalf("%d ops, want %d", w1-w0, wantOps)
		}
	}
	a.Offer(st.FullUpdate())
	step(5)

	// Two updates before the agent runs: a weight change, then api deleted.
	st2 := st.Clone()
	withServer(t, st2, "web", "198.19.0.1:8080", 7)
	a.Offer(&Update{Revision: 11, Services: map[string]*ServiceState{"web": st2.Services["web"]}, Invalid: map[string]string{}})
	a.Offer(&Update{Revision: 12, Services: map[string]*ServiceState{"api": nil}, Invalid: map[string]string{}})
	step(2)
	web := table.svcs[ServiceKeyOf(st.Services["web"].Service)]
	if _, ok := table.svcs[ServiceKeyOf(st.Services["api"].Service)]; ok || web.Destinations[0].Config.Weight != 7 {
		t.Fatalf("kernel: %v", table.svcs)
	}
	if d := a.Desired(); d.Revision != 12 || len(d.Services) != 2 || d.Services["web"] != st2.Services["web"] {
		t.Fatalf("desired: %v", d)
	}
	// An update naming an unchanged service writes nothing; a full one after
	// a delta replaces it.
	a.Offer(&Update{Revision: 13, Services: map[string]*ServiceState{"db": st2.Services["db"]}, Invalid: map[string]string{}})
	step(0)
	a.Offer(&Update{Revision: 14, Services: map[string]*ServiceState{"db": nil}, Invalid: map[string]string{}})
	a.Offer(st.FullUpdate()) // a re-list: web back at weight 1 (1 op), api back (2), db kept
	step(3)
	if len(table.svcs) != 3 || table.svcs[ServiceKeyOf(st.Services["web"].Service)].Destinations[0].Config.Weight != 1 {
		t.Fatalf("kernel after the full update: %v", table.svcs)
	}
}

func TestSameDesired(t *testing.T) {
	st := testState(t, svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	same := st.Clone()
	withServer(t, same, "web", "198.19.0.1:8080", 1) // equal values, new pointers
	if !sameDesired(st, same) {
		t.Fatal("equal states differ")
	}
	weight := st.Clone()
	withServer(t, weight, "web", "198.19.0.1:8080", 2)
	extra := st.Clone()
	withServer(t, extra, "api", "198.19.0.9:8080", 1)
	invalid := st.Clone()
	invalid.Invalid["/merlin/services/x"] = "bad"
	gone := st.Clone()
	delete(gone.Services, "api")
	for name, other := range map[string]*State{"weight": weight, "extra server": extra, "invalid key": invalid, "missing service": gone} {
		if sameDesired(st, other) || sameDesired(other, st) {
			t.Errorf("%s: states compare equal", name)
		}
	}
}

package node

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
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
	gone   int                 // deletes of what did not exist
	refuse func(ipvs.Op) error // when set, ops it returns an error for fail with it
	// hide: the next reads (Table and Lookup calls) that miss a service,
	// as a kernel dump resumed by position can.
	hide map[ipvs.ServiceKey]int
}

// hidden reports whether a read misses k this time.
func (f *fakeTable) hidden(k ipvs.ServiceKey) bool {
	if f.hide[k] > 0 {
		f.hide[k]--
		return true
	}
	return false
}

func newFakeTable() *fakeTable { return &fakeTable{svcs: map[ipvs.ServiceKey]*ipvs.VirtualServer{}} }

func (f *fakeTable) Table(context.Context) ([]ipvs.VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	var out []ipvs.VirtualServer
	for k, vs := range f.svcs {
		if f.hidden(k) {
			continue
		}
		c := *vs
		c.Destinations = slices.Clone(vs.Destinations)
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeTable) Lookup(_ context.Context, k ipvs.ServiceKey) (*ipvs.VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vs := f.svcs[k.Canonical()]
	if vs == nil || f.hidden(k.Canonical()) {
		return nil, nil
	}
	c := *vs
	c.Destinations = slices.Clone(vs.Destinations)
	return &c, nil
}

func (f *fakeTable) Apply(_ context.Context, ops []ipvs.Op) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	be := &ipvs.BatchError{Total: len(ops)}
	for i, op := range ops {
		f.writes++
		if f.refuse != nil {
			if err := f.refuse(op); err != nil {
				be.Failed = append(be.Failed, &ipvs.OpError{Index: i, Op: op, Err: err})
				continue
			}
		}
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
				f.gone++
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
				if op.Kind == ipvs.OpDeleteDestination {
					f.gone++
				}
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

func testState(t *testing.T, services ...*types.VirtualService) *store.State {
	t.Helper()
	st := store.NewState("/merlin", 10)
	for _, svc := range services {
		n, err := model.NormalizeService(svc)
		if err != nil {
			t.Fatal(err)
		}
		st.Services[n.Id] = &store.ServiceState{Service: n, Servers: map[string]*types.RealServer{}}
	}
	return st
}

func withServer(t *testing.T, st *store.State, id, addr string, weight uint32) {
	t.Helper()
	withServerFwd(t, st, id, addr, weight, types.ForwardMethod_MASQ)
}

// withServerFwd adds a server forwarded by fwd.
func withServerFwd(t *testing.T, st *store.State, id, addr string, weight uint32, fwd types.ForwardMethod) {
	t.Helper()
	ss := st.Services[id]
	ip, port, _ := strings.Cut(addr, ":")
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := model.NormalizeServer(&types.RealServer{ServiceID: id, Key: &types.RealServer_Key{Ip: ip, Port: uint32(p)},
		Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(weight), Forward: fwd}}, ss.Service)
	if err != nil {
		t.Fatal(err)
	}
	servers := map[string]*types.RealServer{}
	for k, v := range ss.Servers {
		servers[k] = v
	}
	servers[model.ServerKeyString(srv.Key)] = srv
	st.Services[id] = &store.ServiceState{Service: ss.Service, Servers: servers}
}

func svcAt(id, ip string, sched string) *types.VirtualService {
	return &types.VirtualService{Id: id, Key: &types.VirtualService_Key{Ip: ip, Port: 80, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: sched}}
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
	mu      sync.Mutex
	states  map[health.Check]health.State
	set     map[health.Check]bool
	ch      chan struct{}
	changed map[health.Check]bool // since TakeChanged
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

func (f *fakeMonitor) TakeChanged() []health.Check {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Collect(maps.Keys(f.changed))
	clear(f.changed)
	return out
}

// Stale is the monitor's: the latest due of the checks' results.
func (f *fakeMonitor) Stale() (at, since time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c, st := range f.states {
		if st.Checked.IsZero() {
			continue
		}
		if due := st.Checked.Add(3 * (c.Interval + c.Timeout)); due.After(at) {
			at, since = due, st.Checked
		}
	}
	return at, since
}

// put sets check c's state and notes the change; f.mu is held.
func (f *fakeMonitor) put(c health.Check, st health.State) {
	f.states[c] = st
	f.changed[c] = true
}

func (f *fakeMonitor) force(up bool, since time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.states {
		f.put(c, health.State{Up: up, Since: since, Transitioned: true, Settled: true})
	}
	f.notify()
}

// settle confirms every check's initial state, as first results would.
func (f *fakeMonitor) settle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c, st := range f.states {
		st.Settled = true
		f.put(c, st)
	}
	f.notify()
}

func (f *fakeMonitor) notify() {
	select {
	case f.ch <- struct{}{}:
	default:
	}
}

func newFakeMonitor() *fakeMonitor {
	return &fakeMonitor{states: map[health.Check]health.State{}, ch: make(chan struct{}, 1), changed: map[health.Check]bool{}}
}

func (f *fakeMonitor) wanted() map[health.Check]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.set
}

// checkedAt sets when every check last had a result.
func (f *fakeMonitor) checkedAt(at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c, st := range f.states {
		st.Checked = at
		f.states[c] = st
	}
	f.notify()
}

// forceAddr sets the check of one server address (up or down).
func (f *fakeMonitor) forceAddr(addr netip.Addr, up bool, since time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.states {
		if c.Target.Addr() == addr {
			f.put(c, health.State{Up: up, Since: since, Transitioned: true, Settled: true})
		}
	}
	f.notify()
}

// forceAddrs sets the checks of the server addresses which says (up or
// down), all at once.
func (f *fakeMonitor) forceAddrs(which func(netip.Addr) bool, up bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.states {
		if which(c.Target.Addr()) {
			f.put(c, health.State{Up: up, Since: time.Now(), Transitioned: true, Settled: true})
		}
	}
	f.notify()
}

// Package soak is merlin's own chaos soak, on a real kernel: in the test VM,
// the lab (vmtests/lab) of an etcd, two merlin nodes, three backends and a
// client takes seeded random API writes of every kind, ipvsadm changes
// behind merlin's back, merlin SIGKILLs and restarts, etcd SIGSTOPs and
// SIGKILLs, while clients keep connecting through a stable service. At
// checkpoints (faults paused) both nodes must converge: the desired
// revision applied, every acknowledged write visible, each kernel table
// equal to the API's List, no error that does not apply, a down server
// never up, no client connection failed, and a node at rest running no
// passes beyond its resyncs. It needs root and a kernel with IPVS; on the
// host it skips. `make soak` runs it long (DURATION=, SEED=).
package soak

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

var (
	soakDuration = flag.Duration("soak.duration", envDuration("MERLIN_SOAK_DURATION", 2*time.Minute), "how long to apply random changes and faults")
	soakSeed     = flag.Uint64("soak.seed", envUint("MERLIN_SOAK_SEED"), "random seed (0: from the clock)")
)

const (
	resync     = 3 * time.Second
	maxSvcs    = 100
	stableVIP  = lab.NATVIP + ":80" // never touched by the random changes (NAT, through node1)
	stableDR   = lab.DRVIP + ":80"  // the same, direct routing (through node2)
	checkedVIP = "198.19.0.30:80"   // one server up, one always down
	downServer = "198.18.0.22:8080" // of checkedVIP: its check port is closed
)

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

func envUint(name string) uint64 {
	n, _ := strconv.ParseUint(os.Getenv(name), 10, 64)
	return n
}

func binDir(t *testing.T) string {
	if dir := os.Getenv("MERLIN_BIN"); dir != "" {
		return dir
	}
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..", "bin")
}

// soak is one run: the lab, the random source, and what the API said yes to.
type soak struct {
	t       *testing.T
	l       *lab.Lab
	rng     *rand.Rand
	apis    []types.MerlinClient // one per node
	kernels []*ipvs.Client       // one per node's namespace
	model   map[string]*svcModel // acknowledged state of the random services
	unsure  map[string]bool      // services whose last write has an unknown outcome
	etcd    string               // "up", "stopped" (SIGSTOP) or "killed"
	counts  map[string]int       // operations and faults done, by kind
	// restarted is the node merlin was last restarted on: writes go to
	// another node's API while it comes back.
	restarted   int
	upWhileDown atomic.Int64 // samples of the down server with a weight
}

type svcModel struct {
	vip         string
	scheduler   string
	persistence uint32
	servers     map[string]*srvModel // IP:PORT
}

type srvModel struct{ weight, upper uint32 }

func TestVMSoak(t *testing.T) {
	if !testenv.InVM() {
		testenv.Missing(t, false, "the soak needs the VM kernel (IPVS); run it through make vmtest or make soak")
	}
	testenv.RequireRoot(t)
	seed := *soakSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("soak: seed %d, %s; rerun with: make soak SEED=%d DURATION=%s", seed, *soakDuration, seed, *soakDuration)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("soak FAILED with seed %d; rerun with: make soak SEED=%d DURATION=%s", seed, seed, *soakDuration)
		}
	})
	l, err := lab.New(lab.Config{Bin: binDir(t), MerlinArg: []string{"-reconcile-sync-period", resync.String(), "-deletion-guard-fraction", "-1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"etcd", "node1", "node2"} {
				t.Logf("%s log (tail):\n%s", name, l.Log(name, 40))
			}
		}
		l.Close()
		l.RemoveScratch()
	})
	s := &soak{t: t, l: l, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), model: map[string]*svcModel{},
		unsure: map[string]bool{}, etcd: "up", counts: map[string]int{}, restarted: -1}
	s.connect()
	s.fixedServices()
	for len(s.model) < maxSvcs { // a hundred services to start from
		s.createService()
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go s.watchDownServer(ctx)
	held := s.holdConnection()
	trs := []*lab.Traffic{l.StartTraffic(stableVIP), l.StartTraffic(stableDR)}

	start := time.Now()
	var rss []string
	for step := 1; time.Since(start) < *soakDuration; step++ {
		s.step()
		if step%60 == 0 {
			rss = append(rss, s.checkpoint(step%180 == 0))
		}
	}
	rss = append(rss, s.checkpoint(true))
	var ok int64
	for i, tr := range trs {
		n, failed, lastErr := tr.Finish()
		if failed != 0 || n == 0 {
			t.Errorf("client connections to stable service %d: %d ok, %d failed (last: %v)", i, n, failed, lastErr)
		}
		ok += n
	}
	if err := echo(held); err != nil {
		t.Errorf("the connection held through the soak: %v", err)
	}
	if n := s.upWhileDown.Load(); n != 0 {
		t.Errorf("the down server %s had a weight in %d samples", downServer, n)
	}
	t.Logf("soak done in %s: %v; %d client connections ok, 0 failed; RSS per checkpoint: %s",
		time.Since(start).Round(time.Second), s.counts, ok, strings.Join(rss, " "))
}

func (s *soak) connect() {
	for _, n := range s.l.Nodes {
		conn, err := grpc.NewClient(net.JoinHostPort(n.Addr, "4282"), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, MaxDelay: time.Second}, MinConnectTimeout: 2 * time.Second}))
		if err != nil {
			s.t.Fatal(err)
		}
		s.t.Cleanup(func() { conn.Close() })
		s.apis = append(s.apis, types.NewMerlinClient(conn))
		k, err := ipvs.Open(ipvs.Options{NetNS: n.NS.FD()})
		if err != nil {
			s.t.Fatal(err)
		}
		s.t.Cleanup(func() { k.Close() })
		s.kernels = append(s.kernels, k)
	}
}

// api is the API of a node whose merlin runs, the last restarted one last.
func (s *soak) api() types.MerlinClient {
	for i, n := range s.l.Nodes {
		if n.Running() && i != s.restarted {
			return s.apis[i]
		}
	}
	return s.apis[max(s.restarted, 0)]
}

// fixedServices creates the services the random changes never touch.
func (s *soak) fixedServices() {
	ctx := context.Background()
	check := func(port string) *types.RealServer_HealthCheck {
		return &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("tcp://:" + port), Period: durationpb.New(time.Second),
			Timeout: durationpb.New(500 * time.Millisecond), UpThreshold: 1, DownThreshold: 1}
	}
	must := func(_ any, err error) {
		if err != nil {
			s.t.Fatal(err)
		}
	}
	must(s.api().CreateService(ctx, &types.VirtualService{Id: "stable", Key: apiKey(stableVIP), Config: &types.VirtualService_Config{Scheduler: "rr"}}))
	for i := range 3 {
		must(s.api().CreateServer(ctx, masq("stable", lab.BackendAddr(i)+":8080", 1)))
	}
	must(s.api().CreateService(ctx, &types.VirtualService{Id: "stable-dr", Key: apiKey(stableDR), Config: &types.VirtualService_Config{Scheduler: "rr"}}))
	for i := range 3 {
		dr := masq("stable-dr", lab.BackendAddr(i)+":80", 1)
		dr.Config.Forward = types.ForwardMethod_ROUTE
		must(s.api().CreateServer(ctx, dr))
	}
	must(s.api().CreateService(ctx, &types.VirtualService{Id: "checked", Key: apiKey(checkedVIP), Config: &types.VirtualService_Config{Scheduler: "rr"}}))
	up := masq("checked", lab.BackendAddr(0)+":8080", 1)
	up.HealthCheck = check("8080")
	down := masq("checked", downServer, 1)
	down.HealthCheck = check("9999")
	// The same check target as the down server, at weight 0: a restart must
	// not take its silence for "up" (the check is shared).
	idle := masq("checked", strings.Replace(downServer, ":8080", ":8081", 1), 0)
	idle.HealthCheck = check("9999")
	for _, srv := range []*types.RealServer{up, down, idle} {
		must(s.api().CreateServer(ctx, srv))
	}
}

func apiKey(addr string) *types.VirtualService_Key {
	ap := netip.MustParseAddrPort(addr)
	return &types.VirtualService_Key{Ip: ap.Addr().String(), Port: uint32(ap.Port()), Protocol: types.Protocol_TCP}
}

func masq(id, addr string, weight uint32) *types.RealServer {
	ap := netip.MustParseAddrPort(addr)
	return &types.RealServer{ServiceID: id, Key: &types.RealServer_Key{Ip: ap.Addr().String(), Port: uint32(ap.Port())},
		Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(weight), Forward: types.ForwardMethod_MASQ}}
}

// step does one random thing: mostly an API write, sometimes a change
// behind merlin's back, now and then a fault.
func (s *soak) step() {
	switch r := s.rng.IntN(100); {
	case r < 72:
		if s.etcd == "up" {
			s.write()
		}
	case r < 88:
		s.behindTheBack()
	default:
		s.fault()
	}
	if s.etcd == "stopped" && s.rng.IntN(4) == 0 {
		s.resumeEtcd()
	}
}

// write makes one random API write and records it if acknowledged.
func (s *soak) write() {
	ids := s.serviceIDs()
	kind := []string{"create service", "delete service", "scheduler", "persistence on", "persistence off",
		"create server", "create server", "delete server", "weight", "weight", "threshold on", "threshold off"}[s.rng.IntN(12)]
	if len(ids) == 0 || (kind == "create service" && len(ids) < maxSvcs) {
		s.createService()
		return
	}
	id := ids[s.rng.IntN(len(ids))]
	m := s.model[id]
	srvKey := ""
	if keys := sortedKeys(m.servers); len(keys) > 0 {
		srvKey = keys[s.rng.IntN(len(keys))]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svc := func(c *types.VirtualService_Config) *types.VirtualService {
		return &types.VirtualService{Id: id, Config: c}
	}
	var err error
	var apply func()
	switch kind {
	case "delete service":
		_, err = s.api().DeleteService(ctx, wrapperspb.String(id))
		apply = func() { delete(s.model, id) }
	case "scheduler":
		sched := []string{"rr", "wrr", "wlc", "lc"}[s.rng.IntN(4)]
		_, err = s.api().UpdateService(ctx, svc(&types.VirtualService_Config{Scheduler: sched}))
		apply = func() { m.scheduler = sched }
	case "persistence on":
		_, err = s.api().UpdateService(ctx, svc(&types.VirtualService_Config{PersistenceTimeout: wrapperspb.UInt32(600)}))
		apply = func() { m.persistence = 600 }
	case "persistence off": // a merge that clears a field
		_, err = s.api().UpdateService(ctx, svc(&types.VirtualService_Config{PersistenceTimeout: wrapperspb.UInt32(0)}))
		apply = func() { m.persistence = 0 }
	case "create server":
		addr := fmt.Sprintf("%s:%d", lab.BackendAddr(s.rng.IntN(3)), 8080+s.rng.IntN(4))
		if m.servers[addr] != nil {
			return
		}
		w := uint32(s.rng.IntN(6))
		_, err = s.api().CreateServer(ctx, masq(id, addr, w))
		apply = func() { m.servers[addr] = &srvModel{weight: w} }
	case "delete server", "weight", "threshold on", "threshold off":
		if srvKey == "" {
			return
		}
		srv := masq(id, srvKey, 0)
		switch kind {
		case "delete server":
			_, err = s.api().DeleteServer(ctx, srv)
			apply = func() { delete(m.servers, srvKey) }
		case "weight":
			w := uint32(s.rng.IntN(6))
			srv.Config = &types.RealServer_Config{Weight: wrapperspb.UInt32(w)}
			_, err = s.api().UpdateServer(ctx, srv)
			apply = func() { m.servers[srvKey].weight = w }
		default:
			upper := uint32(0)
			if kind == "threshold on" {
				upper = 100
			}
			srv.Config = &types.RealServer_Config{UpperThreshold: wrapperspb.UInt32(upper)}
			_, err = s.api().UpdateServer(ctx, srv)
			apply = func() { m.servers[srvKey].upper = upper }
		}
	default:
		return
	}
	s.record(kind, id, err, apply)
}

func (s *soak) createService() {
	var free []int
	for i := range maxSvcs {
		if s.model[fmt.Sprintf("s%03d", i)] == nil {
			free = append(free, i)
		}
	}
	if len(free) == 0 {
		return
	}
	i := free[s.rng.IntN(len(free))]
	id, vip := fmt.Sprintf("s%03d", i), fmt.Sprintf("198.19.1.%d:80", i+1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.api().CreateService(ctx, &types.VirtualService{Id: id, Key: apiKey(vip), Config: &types.VirtualService_Config{Scheduler: "wrr"}})
	s.record("create service", id, err, func() { s.model[id] = &svcModel{vip: vip, scheduler: "wrr", servers: map[string]*srvModel{}} })
	if m := s.model[id]; m != nil && err == nil {
		addr := lab.BackendAddr(i%3) + ":8080"
		_, err := s.api().CreateServer(ctx, masq(id, addr, 1))
		s.record("create server", id, err, func() { m.servers[addr] = &srvModel{weight: 1} })
	}
}

// record keeps an acknowledged write; a refusal the API is sure of leaves
// the model alone; any other failure leaves the object's state unknown
// until the next checkpoint reads it back.
func (s *soak) record(kind, id string, err error, apply func()) {
	s.counts["api "+kind]++
	switch status.Code(err) {
	case codes.OK:
		if !s.unsure[id] {
			apply()
		}
	case codes.NotFound, codes.AlreadyExists, codes.InvalidArgument, codes.Aborted:
		s.counts["api refused"]++
	default:
		s.counts["api unsure"]++
		s.unsure[id] = true
	}
}

// behindTheBack changes a node's kernel as an operator with ipvsadm would,
// sometimes racing an API change to the same object.
func (s *soak) behindTheBack() {
	ids := s.serviceIDs()
	if len(ids) == 0 {
		return
	}
	n := s.l.Nodes[s.rng.IntN(len(s.l.Nodes))]
	id := ids[s.rng.IntN(len(ids))]
	m := s.model[id]
	var args []string
	keys := sortedKeys(m.servers)
	switch r := s.rng.IntN(3); {
	case r == 0 || len(keys) == 0:
		args = []string{"-D", "-t", m.vip}
	case r == 1:
		args = []string{"-d", "-t", m.vip, "-r", keys[s.rng.IntN(len(keys))]}
	default:
		args = []string{"-e", "-t", m.vip, "-r", keys[s.rng.IntN(len(keys))], "-m", "-w", "9"}
	}
	s.counts["ipvsadm "+args[0]]++
	_, _ = lab.Run(n.NS, "ipvsadm", args...) // it may already be gone: that is part of the race
	if s.etcd == "up" && s.rng.IntN(3) == 0 {
		s.write() // an API change right behind it
	}
}

func (s *soak) fault() {
	switch r := s.rng.IntN(10); {
	case r < 5:
		n := s.l.Nodes[s.rng.IntN(len(s.l.Nodes))]
		s.counts["merlin SIGKILL"]++
		s.l.StopNode(n, syscall.SIGKILL)
		if err := s.l.StartNode(n); err != nil {
			s.t.Fatal(err)
		}
		s.restarted = slices.Index(s.l.Nodes, n)
	case r < 8 && s.etcd == "up":
		s.counts["etcd SIGSTOP"]++
		if err := s.l.SignalEtcd(syscall.SIGSTOP); err != nil {
			s.t.Fatal(err)
		}
		s.etcd = "stopped"
	case s.etcd != "killed":
		s.counts["etcd SIGKILL"]++
		if s.etcd == "stopped" {
			s.resumeEtcd()
		}
		s.l.StopEtcd()
		s.etcd = "killed"
		s.resumeEtcd()
	}
}

func (s *soak) resumeEtcd() {
	switch s.etcd {
	case "stopped":
		if err := s.l.SignalEtcd(syscall.SIGCONT); err != nil {
			s.t.Fatal(err)
		}
	case "killed":
		if err := s.l.StartEtcd(); err != nil {
			s.t.Fatal(err)
		}
	}
	s.etcd = "up"
}

// checkpoint pauses the faults and waits until both nodes converge, then
// checks everything that must hold; quiet also counts passes at rest. It
// returns the nodes' RSS.
func (s *soak) checkpoint(quiet bool) string {
	s.t.Helper()
	start := time.Now()
	s.resumeEtcd()
	for _, n := range s.l.Nodes {
		if err := s.l.WaitReady(n); err != nil {
			s.t.Fatalf("checkpoint: %v", err)
		}
	}
	list := s.list()
	s.acknowledgedVisible(list)
	want := expectedTable(s.t, list)
	if err := lab.Eventually(90*time.Second, func() error { return s.converged(want) }); err != nil {
		s.t.Fatalf("checkpoint after %v: not converged: %v", s.counts, err)
	}
	took := time.Since(start)
	if quiet {
		for _, n := range s.l.Nodes {
			s.quietAtRest(n)
		}
	}
	var rss []string
	for _, n := range s.l.Nodes {
		rss = append(rss, fmt.Sprintf("%s=%.0fMiB", n.Name, rssMiB(n.Pid())))
	}
	s.counts["checkpoints"]++
	s.t.Logf("checkpoint %d: converged in %s (%d services); RSS %s", s.counts["checkpoints"], took.Round(100*time.Millisecond), len(list.Items), strings.Join(rss, ", "))
	return strings.Join(rss, ",")
}

func (s *soak) list() *types.ListResponse {
	var list *types.ListResponse
	err := lab.Eventually(60*time.Second, func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		list, err = s.api().List(ctx, &emptypb.Empty{})
		return err
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return list
}

// acknowledgedVisible: every acknowledged write is in the List; services
// with a write of unknown outcome take the List's state.
func (s *soak) acknowledgedVisible(list *types.ListResponse) {
	got := map[string]*svcModel{}
	for _, item := range list.Items {
		if id := item.Service.Id; randomService(id) {
			m := &svcModel{vip: net.JoinHostPort(item.Service.Key.Ip, strconv.Itoa(int(item.Service.Key.Port))), scheduler: item.Service.Config.Scheduler,
				persistence: item.Service.Config.GetPersistenceTimeout().GetValue(), servers: map[string]*srvModel{}}
			for _, srv := range item.Servers {
				m.servers[model.ServerKeyString(srv.Key)] = &srvModel{weight: srv.Config.GetWeight().GetValue(), upper: srv.Config.GetUpperThreshold().GetValue()}
			}
			got[id] = m
		}
	}
	for id := range s.unsure {
		if g := got[id]; g != nil {
			s.model[id] = g
		} else {
			delete(s.model, id)
		}
	}
	clear(s.unsure)
	for id, m := range s.model {
		g := got[id]
		if g == nil {
			s.t.Fatalf("acknowledged service %s missing from List", id)
		}
		if g.vip != m.vip || g.scheduler != m.scheduler || g.persistence != m.persistence || len(g.servers) != len(m.servers) {
			s.t.Fatalf("service %s: List has %+v, acknowledged %+v", id, *g, *m)
		}
		for k, srv := range m.servers {
			if gs := g.servers[k]; gs == nil || *gs != *srv {
				s.t.Fatalf("server %s/%s: List has %+v, acknowledged %+v", id, k, gs, *srv)
			}
		}
	}
	for id := range got {
		if s.model[id] == nil {
			s.t.Fatalf("List has service %s that no acknowledged write made", id)
		}
	}
}

// expectedTable is the kernel table the List asks for: every service as
// merlin converts it, the checked service's down server at weight 0.
func expectedTable(t *testing.T, list *types.ListResponse) []ipvs.VirtualServer {
	var want []ipvs.VirtualServer
	for _, item := range list.Items {
		ss := &store.ServiceState{Service: item.Service, Servers: map[string]*types.RealServer{}}
		for _, srv := range item.Servers {
			ss.Servers[model.ServerKeyString(srv.Key)] = srv
		}
		vs, err := node.ToIPVS(ss, func(_ string, _ ipvs.DestinationKey, srv *types.RealServer) uint32 {
			if model.ServerKeyString(srv.Key) == downServer && item.Service.Id == "checked" {
				return 0
			}
			return srv.Config.GetWeight().GetValue()
		})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, vs)
	}
	return want
}

// converged: every node applied the desired revision without errors, and
// its kernel table is the expected one.
func (s *soak) converged(want []ipvs.VirtualServer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.api().Status(ctx, &emptypb.Empty{})
	if err != nil {
		return err
	}
	if len(st.Nodes) != len(s.l.Nodes) {
		return fmt.Errorf("%d nodes report status", len(st.Nodes))
	}
	for _, n := range st.Nodes {
		if n.AppliedRevision < st.DesiredRevision || n.LastResult != "ok" || len(n.Errors) > 0 {
			return fmt.Errorf("%s: applied %d of %d, %q, errors %v", n.Node, n.AppliedRevision, st.DesiredRevision, n.LastResult, n.Errors)
		}
	}
	for i, k := range s.kernels {
		table, err := k.Table(ctx)
		if err != nil {
			return err
		}
		var have []ipvs.VirtualServer
		for _, vs := range table {
			if a := vs.Service.Key.Address.As4(); a[0] == 198 && a[1] == 19 {
				have = append(have, vs)
			}
		}
		if ops := ipvs.Diff(want, have); len(ops) > 0 {
			return fmt.Errorf("%s's kernel differs from the List by %d ops, first %s", s.l.Nodes[i].Name, len(ops), ops[0])
		}
		if err := s.vipsMatch(s.l.Nodes[i], want); err != nil {
			return err
		}
	}
	return nil
}

// vipsMatch: the node's VIP interface holds exactly the VIPs of the List.
func (s *soak) vipsMatch(n *lab.Node, want []ipvs.VirtualServer) error {
	out, err := lab.Run(n.NS, "ip", "-o", "-4", "addr", "show", "dev", "merlin0")
	if err != nil {
		return err
	}
	var have, need []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[2] == "inet" {
			have = append(have, strings.TrimSuffix(f[3], "/32"))
		}
	}
	for _, vs := range want {
		need = append(need, vs.Service.Key.Address.String())
	}
	slices.Sort(have)
	slices.Sort(need)
	if need = slices.Compact(need); !slices.Equal(have, need) {
		return fmt.Errorf("%s's VIPs %v, want %v", n.Name, have, need)
	}
	return nil
}

// quietAtRest: a node with nothing to do runs one pass per background
// resync and no more (counted over three resyncs). A health check that
// changes state meanwhile is something to do (each may take a pass); any
// other pass is a defect, and the failure names what woke them.
func (s *soak) quietAtRest(n *lab.Node) {
	causes := func() map[string]float64 {
		c, err := lab.Series(n, "merlin_reconcile_causes_total")
		if err != nil {
			s.t.Fatal(err)
		}
		return c
	}
	passes0, resyncs0, causes0 := metric(s.t, n, "merlin_reconcile_duration_seconds_count"), metric(s.t, n, "merlin_resyncs_total"), causes()
	health0 := metric(s.t, n, "merlin_health_transitions_total")
	err := lab.Eventually(20*resync, func() error {
		if got := metric(s.t, n, "merlin_resyncs_total") - resyncs0; got < 3 {
			return fmt.Errorf("%v resyncs", got)
		}
		return nil
	})
	if err != nil {
		s.t.Fatalf("%s: %v", n.Name, err)
	}
	passes, resyncs := metric(s.t, n, "merlin_reconcile_duration_seconds_count")-passes0, metric(s.t, n, "merlin_resyncs_total")-resyncs0
	health := metric(s.t, n, "merlin_health_transitions_total") - health0
	if health > 0 {
		s.t.Logf("%s at rest: %v health transitions (%v passes in %v resyncs)", n.Name, health, passes, resyncs)
	}
	if passes > resyncs+1+health {
		woke := causes()
		for k := range woke {
			woke[k] -= causes0[k]
		}
		s.t.Fatalf("%s at rest: %v passes in %v resyncs and %v health transitions; woken by %v", n.Name, passes, resyncs, health, woke)
	}
}

// watchDownServer samples both kernels: the down server of the checked
// service must never carry a weight, also across merlin restarts.
func (s *soak) watchDownServer(ctx context.Context) {
	key := ipvs.ServiceKey{Protocol: ipvs.TCP, Address: netip.MustParseAddrPort(checkedVIP).Addr(), Port: 80}.Canonical()
	down := netip.MustParseAddrPort(downServer)
	seenDown := make([]bool, len(s.kernels))
	for range 100000 { // bounded; the soak ends it long before
		for i, k := range s.kernels {
			dests, err := k.Destinations(ctx, key)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				continue
			}
			for _, d := range dests {
				if d.Key.Address == down.Addr() && d.Key.Port == down.Port() {
					if d.Config.Weight == 0 {
						seenDown[i] = true
					} else if seenDown[i] {
						s.upWhileDown.Add(1) // once merlin took it down, it never comes back up
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *soak) serviceIDs() []string { return sortedKeys(s.model) }

// randomService: the IDs the random changes use, s000 to s099.
func randomService(id string) bool {
	n, err := strconv.Atoi(strings.TrimPrefix(id, "s"))
	return len(id) == 4 && id[0] == 's' && err == nil && n >= 0 && n < maxSvcs
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// holdConnection opens a connection through the stable service that stays
// open through the soak.
func (s *soak) holdConnection() net.Conn {
	conn, _, err := s.l.Connect(stableVIP)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return conn
}

func echo(conn net.Conn) error {
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(conn, "still there"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "still there\n" {
		return fmt.Errorf("echo %q: %v", line, err)
	}
	return nil
}

// metric sums every series of a metric on a node's /metrics.
func metric(t *testing.T, n *lab.Node, name string) float64 {
	t.Helper()
	v, err := lab.Metric(n, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

package node

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/types"
)

// manyChecked is services services, each on a VIP of its own with two
// health-checked servers; server j has address 198.19.0.0 + j.
func manyChecked(t *testing.T, services int) *store.State {
	t.Helper()
	var svcs []*types.VirtualService
	for i := range services {
		svc := svcAt(fmt.Sprintf("s%05d", i), serverAddr(0x10000+i).String(), "wrr")
		svc.Defaults = &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{
			Endpoint: wrapperspb.String("tcp://:8099"), Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second),
			UpThreshold: 1, DownThreshold: 1}}
		svcs = append(svcs, svc)
	}
	st := testState(t, svcs...)
	for i := range services {
		for j := range 2 {
			withServer(t, st, fmt.Sprintf("s%05d", i), serverAddr(2*i+j).String()+":8080", 1)
		}
	}
	return st
}

// serverAddr is 198.19.0.0 + j (j below 2^16: servers; above: VIPs in 198.18).
func serverAddr(j int) netip.Addr {
	b := netip.MustParseAddr("198.18.0.0").As4()
	if j < 0x10000 {
		b[1] = 19
	} else {
		j -= 0x10000
	}
	b[2], b[3] = byte(j>>8), byte(j)
	return netip.AddrFrom4(b)
}

// A node checking more servers than a status lists: its status names
// servers down first, each list bounded and what it leaves out counted in
// omitted, with counts of all servers, small enough for the store —
// published through a real etcd and read back whole — and the lists come
// back complete once the servers are up again.
func TestStatusBoundedAtScale(t *testing.T) {
	const services, down = 1200, 2300 // servers 0..2299 down: services 0..1149
	mon := newFakeMonitor()
	a := newTestRunner(t, RunnerConfig{}, RunnerDeps{IPVS: newFakeTable(), Health: mon})
	a.start(t)
	a.apply(t, manyChecked(t, services))
	mon.settle()
	a.waitFor(t, "every server up", func(s *types.NodeStatus) bool { return s.ServersUp == 2*services && s.VipsServing == services })
	mon.forceAddrs(func(a netip.Addr) bool { return a.As4()[1] == 19 && int(a.As4()[2])<<8|int(a.As4()[3]) < down }, false)
	st := a.waitFor(t, "the servers down", func(s *types.NodeStatus) bool { return s.ServersUp == 2*services-down })
	for _, l := range []struct {
		name   string
		listed int
		want   int
	}{{omittedServers, len(st.Servers), down}, {omittedServicesDown, len(st.ServicesDown), down / 2}, {omittedVIPsNotServing, len(st.VipsNotServing), down / 2}} {
		if l.listed == 0 || l.listed > maxStatusEntries || l.listed+int(st.Omitted[l.name]) != l.want {
			t.Errorf("%s: %d listed, %d omitted; want %d in all, some listed, at most %d", l.name, l.listed, st.Omitted[l.name], l.want, maxStatusEntries)
		}
	}
	if size := proto.Size(st); st.ServersChecked != 2*services || st.Servers[0].Up || size > statusBudget {
		t.Fatalf("%d servers checked, first listed up: %v, %d bytes; want %d, false, at most %d", st.ServersChecked, st.Servers[0].Up, size, 2*services, statusBudget)
	}
	if published := publishOnce(t, a); !proto.Equal(published, st) {
		t.Fatalf("etcd has a status other than the node's:\n%v", published)
	}
	mon.forceAddrs(func(netip.Addr) bool { return true }, true)
	st = a.waitFor(t, "every server up again", func(s *types.NodeStatus) bool { return s.ServersUp == 2*services })
	if len(st.Servers) != 0 || len(st.ServicesDown) != 0 || len(st.VipsNotServing) != 0 || len(st.Omitted) != 0 {
		t.Fatalf("all up: %d servers, %d services, %d VIPs listed, omitted %v", len(st.Servers), len(st.ServicesDown), len(st.VipsNotServing), st.Omitted)
	}
}

// publishOnce runs PublishStatus against a real etcd until the node's
// status is there, and returns it as read back.
func publishOnce(t *testing.T, a testNode) *types.NodeStatus {
	t.Helper()
	s := store.NewStore(etcdtest.Start(t, etcdtest.Embedded).Client(t), "/merlin")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); PublishStatus(ctx, s, a.Runner, "", discardLogger()) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		nodes, err := s.NodeStatuses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) == 1 {
			return nodes[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no node status in etcd after 20 s")
	return nil
}

package node

import (
	"context"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/types"
)

type fakeDestinations map[ipvs.ServiceKey][]ipvs.DestinationStatus

func (f fakeDestinations) Destinations(_ context.Context, key ipvs.ServiceKey) ([]ipvs.DestinationStatus, error) {
	d, ok := f[key]
	if !ok {
		return nil, syscall.ESRCH
	}
	return d, nil
}

// The sink counts each drained server's connections in the kernel for the
// drain's revision; a server or service the kernel lacks has none; a done
// drain is no longer counted.
func TestServerDrainSinkReports(t *testing.T) {
	st := testState(t, svcAt("web", "198.18.0.1", "wlc"), svcAt("gone", "198.18.0.2", "wlc"))
	withServer(t, st, "web", "198.19.0.1:8080", 0)
	withServer(t, st, "web", "198.19.0.2:8080", 0)
	plans := map[string]*ServicePlan{}
	for id, ss := range st.Services {
		plans[id] = PlanService(id, ss, ServiceChecks{}, HealthView{}, time.Now())
	}
	web := plans["web"].Virtual.Service.Key
	dest := func(addr string, active, inactive uint32) ipvs.DestinationStatus {
		return ipvs.DestinationStatus{Destination: ipvs.Destination{Key: ipvs.DestinationKey{Address: netip.MustParseAddr(addr), Port: 8080}},
			ActiveConnections: active, InactiveConnections: inactive}
	}
	s := NewServerDrainSink(fakeDestinations{web: {dest("198.19.0.1", 3, 2), dest("198.19.0.2", 0, 0)}}).(*serverDrainSink)
	drains := map[string]store.ServerDrain{
		"web/198.19.0.1:8080":  {Revision: 7},
		"web/198.19.0.2:8080":  {Revision: 8},
		"web/198.19.0.9:8080":  {Revision: 9},  // not in the kernel
		"gone/198.19.0.1:8080": {Revision: 10}, // its service is not programmed here
		"web/198.19.0.3:8080":  {Revision: 11, Outcome: store.DrainComplete},
	}
	delete(plans, "gone")
	if err := s.Set(context.Background(), &Plan{Services: plans, ServerDrains: drains}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Changed():
	default:
		t.Fatal("a new set of drains did not ask for a report")
	}
	fill, err := s.Report(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ns types.NodeStatus
	fill(&ns)
	got := map[string][3]int64{}
	for _, p := range ns.ServerDrains {
		if p.Error != "" {
			t.Errorf("%s: %s", p.Server, p.Error)
		}
		got[p.ServiceId+"/"+p.Server] = [3]int64{p.DrainRevision, int64(p.Active), int64(p.Inactive)}
	}
	want := map[string][3]int64{
		"gone/198.19.0.1:8080": {10, 0, 0}, "web/198.19.0.1:8080": {7, 3, 2}, "web/198.19.0.2:8080": {8, 0, 0}, "web/198.19.0.9:8080": {9, 0, 0},
	}
	if len(got) != len(want) {
		t.Fatalf("reports %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %v, want %v", k, got[k], v)
		}
	}
}

package control

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/health"
)

// fakeKernel answers with the plan's services and fixed counters.
type fakeKernel struct{ table []ipvs.VirtualServer }

func (k fakeKernel) Stats(_ context.Context, keep func(ipvs.ServiceKey) bool) ([]ipvs.ServiceStats, error) {
	var out []ipvs.ServiceStats
	for _, vs := range k.table {
		if !keep(vs.Service.Key) {
			continue
		}
		ss := ipvs.ServiceStats{ServiceStatus: ipvs.ServiceStatus{Service: vs.Service, Stats: ipvs.Stats{Connections: 7, InPackets: 70}}}
		for _, d := range vs.Destinations {
			ss.Destinations = append(ss.Destinations, ipvs.DestinationStatus{Destination: d, ActiveConnections: 2, Stats: ipvs.Stats{InPackets: 30}})
		}
		out = append(out, ss)
	}
	return out, nil
}

type fakeCounters struct {
	keys xdpstats.Keys
	snap xdpstats.Snapshot
}

func (f *fakeCounters) Set(k xdpstats.Keys) error        { f.keys = k; return nil }
func (f *fakeCounters) Read() (xdpstats.Snapshot, error) { return f.snap, nil }
func (f *fakeCounters) Status() xdpstats.Status {
	return xdpstats.Status{On: true, Keys: len(f.keys.VIPs)}
}

// The collector names the kernel's and the eBPF counters by the plan's
// service IDs and server addresses, and leaves out services not merlin's.
func TestTrafficCollectorLabels(t *testing.T) {
	st := testState(t, svcAt("web", "198.18.0.1", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	p := PlanService("web", st.Services["web"], PlanChecks(st.Services["web"], nil), HealthView{States: map[health.Check]health.State{}}, planNow)
	plan := &Plan{Services: map[string]*ServicePlan{"web": p}}
	foreign := ipvs.VirtualServer{Service: ipvs.Service{Key: ipvs.ServiceKey{Protocol: ipvs.TCP, Address: mustAddr("198.18.9.9"), Port: 80}.Canonical()}}
	fc := &fakeCounters{}
	tr := NewTraffic(fakeKernel{table: []ipvs.VirtualServer{p.Virtual, foreign}}, fc, 0)
	if err := tr.Sink().Set(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	if len(fc.keys.VIPs) != 1 || len(fc.keys.Servers) != 1 {
		t.Fatalf("keys %+v", fc.keys)
	}
	fc.snap = xdpstats.Snapshot{VIPs: map[xdpstats.VIPKey]xdpstats.Counters{fc.keys.VIPs[0]: {Packets: 5, SYN: 1}},
		Forwarded: map[xdpstats.ServerKey]xdpstats.Counters{fc.keys.Servers[0]: {Packets: 3}}}
	want := `
# HELP merlin_ipvs_backend_incoming_packets_total Packets IPVS forwarded to the real server (kernel counter).
# TYPE merlin_ipvs_backend_incoming_packets_total counter
merlin_ipvs_backend_incoming_packets_total{server="198.19.0.1:8080",service="web"} 30
# HELP merlin_ipvs_service_connections_total Connections IPVS scheduled for the service (kernel counter).
# TYPE merlin_ipvs_service_connections_total counter
merlin_ipvs_service_connections_total{service="web"} 7
# HELP merlin_tc_forwarded_packets_total Packets IPVS forwarded to the real server, seen leaving this node (TC).
# TYPE merlin_tc_forwarded_packets_total counter
merlin_tc_forwarded_packets_total{server="198.19.0.1:8080",service="web"} 3
# HELP merlin_xdp_syn_total TCP connection attempts (SYN without ACK) to the service arriving at this node (XDP).
# TYPE merlin_xdp_syn_total counter
merlin_xdp_syn_total{service="web"} 1
`
	if err := testutil.CollectAndCompare(tr, strings.NewReader(want), "merlin_ipvs_backend_incoming_packets_total", "merlin_ipvs_service_connections_total",
		"merlin_tc_forwarded_packets_total", "merlin_xdp_syn_total"); err != nil {
		t.Fatal(err)
	}
}

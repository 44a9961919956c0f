package node

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

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
	var out strings.Builder
	if err := tr.WriteMetrics(context.Background(), &out); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(out.String()))
	if err != nil {
		t.Fatalf("the text does not parse: %v\n%s", err, out.String())
	}
	value := func(name string, labels ...string) float64 {
		t.Helper()
		f := families[name]
		if f == nil {
			t.Fatalf("no %s in\n%s", name, out.String())
		}
		for _, m := range f.Metric {
			var got []string
			for _, l := range m.Label {
				got = append(got, l.GetName(), l.GetValue())
			}
			if slices.Equal(got, labels) {
				if m.Counter != nil {
					return m.Counter.GetValue()
				}
				return m.Gauge.GetValue()
			}
		}
		t.Fatalf("no %s%v in\n%s", name, labels, out.String())
		return 0
	}
	if v := value("merlin_ipvs_backend_incoming_packets_total", "service", "web", "server", "198.19.0.1:8080"); v != 30 {
		t.Errorf("backend incoming packets %v", v)
	}
	if v := value("merlin_ipvs_service_connections_total", "service", "web"); v != 7 {
		t.Errorf("service connections %v", v)
	}
	if v := value("merlin_tc_forwarded_packets_total", "service", "web", "server", "198.19.0.1:8080"); v != 3 {
		t.Errorf("forwarded packets %v", v)
	}
	if v := value("merlin_xdp_syn_total", "service", "web"); v != 1 {
		t.Errorf("xdp syn %v", v)
	}
	if n := len(families["merlin_ipvs_service_connections_total"].Metric); n != 1 {
		t.Errorf("%d services exported: the foreign one must not be", n)
	}
	if families["merlin_ipvs_service_connections_total"].GetType().String() != "COUNTER" || families["merlin_ipvs_backend_weight"].GetType().String() != "GAUGE" {
		t.Errorf("types: %v", families["merlin_ipvs_service_connections_total"].GetType())
	}
}

// Label values are escaped: a service ID is the API's to choose.
func TestTextWriterEscapes(t *testing.T) {
	var b strings.Builder
	tw := newTextWriter(&b)
	tw.family("m", "gauge", "a\\b\nc")
	tw.sample("m", 1.5, "service", "a\"b\\c\nd")
	_ = tw.flush()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	m := families["m"].Metric[0]
	if m.Label[0].GetValue() != "a\"b\\c\nd" || m.Gauge.GetValue() != 1.5 {
		t.Fatalf("round trip: %v", m)
	}
}

package node

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/health"
)

// fakeKernel answers with the plan's services and fixed counters.
type fakeKernel struct{ table []ipvs.VirtualServer }

func (k fakeKernel) StatsEach(_ context.Context, keep func(ipvs.ServiceKey) bool, fn func(ipvs.ServiceStats)) error {
	for _, vs := range k.table {
		if !keep(vs.Service.Key) {
			continue
		}
		ss := ipvs.ServiceStats{ServiceStatus: ipvs.ServiceStatus{Service: vs.Service, Stats: ipvs.Stats{Connections: 7, InPackets: 70}}}
		for _, d := range vs.Destinations {
			ss.Destinations = append(ss.Destinations, ipvs.DestinationStatus{Destination: d, ActiveConnections: 2, Stats: ipvs.Stats{InPackets: 30}})
		}
		fn(ss)
	}
	return nil
}

type fakeCounters struct {
	keys    xdpstats.Keys
	updates int // Update calls
	mu      sync.Mutex
	snap    xdpstats.Snapshot
}

func (f *fakeCounters) Set(k xdpstats.Keys) error { f.keys = k; return nil }

// Update applies a change to the keys Set gave.
func (f *fakeCounters) Update(add, remove xdpstats.Keys) error {
	f.keys.VIPs = append(slices.DeleteFunc(f.keys.VIPs, func(k xdpstats.VIPKey) bool { return slices.Contains(remove.VIPs, k) }), add.VIPs...)
	f.keys.Servers = append(slices.DeleteFunc(f.keys.Servers, func(k xdpstats.ServerKey) bool { return slices.Contains(remove.Servers, k) }), add.Servers...)
	f.updates++
	return nil
}
func (f *fakeCounters) Read() (xdpstats.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap, nil
}
func (f *fakeCounters) ReadEach(v xdpstats.Visit) error {
	s, err := f.Read()
	s.Each(v)
	return err
}
func (f *fakeCounters) setSnap(s xdpstats.Snapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snap = s
}
func (f *fakeCounters) Status() xdpstats.Status {
	return xdpstats.Status{On: true, Keys: len(f.keys.VIPs)}
}

// trafficFixture is one NAT service "web" with one server, its plan given
// to a Traffic over fake kernel and eBPF counters, reads running.
type trafficFixture struct {
	tr   *Traffic
	fc   *fakeCounters
	stop func()
}

func newTrafficFixture(t *testing.T, k KernelCounters, opts TrafficOptions) *trafficFixture {
	t.Helper()
	st := testState(t, svcAt("web", "198.18.0.1", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	p := PlanService("web", st.Services["web"], PlanChecks(st.Services["web"], nil), HealthView{States: map[health.Check]health.State{}}, planNow)
	foreign := ipvs.VirtualServer{Service: ipvs.Service{Key: ipvs.ServiceKey{Protocol: ipvs.TCP, Address: mustAddr("198.18.9.9"), Port: 80}.Canonical()}}
	if k == nil {
		k = fakeKernel{table: []ipvs.VirtualServer{p.Virtual, foreign}}
	}
	fc := &fakeCounters{}
	opts.ReadInterval = 10 * time.Millisecond
	tr := NewTraffic(k, fc, opts)
	if err := tr.Sink().Set(context.Background(), &Plan{Services: map[string]*ServicePlan{"web": p}}); err != nil {
		t.Fatal(err)
	}
	if len(fc.keys.VIPs) != 1 || len(fc.keys.Servers) != 1 {
		t.Fatalf("keys %+v", fc.keys)
	}
	fc.setSnap(xdpstats.Snapshot{VIPs: map[xdpstats.VIPKey]xdpstats.Counters{fc.keys.VIPs[0]: {Packets: 5, SYN: 1}},
		Forwarded: map[xdpstats.ServerKey]xdpstats.Counters{fc.keys.Servers[0]: {Packets: 3, Bytes: 300}},
		Replies:   map[xdpstats.ServerKey]xdpstats.Counters{fc.keys.Servers[0]: {Packets: 2, SYNACK: 1}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.RunReads(ctx); close(done) }()
	f := &trafficFixture{tr: tr, fc: fc, stop: func() { cancel(); <-done }}
	t.Cleanup(f.stop)
	return f
}

// scrape writes the metrics and parses them.
func (f *trafficFixture) scrape(t *testing.T) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	var out strings.Builder
	if err := f.tr.WriteMetrics(context.Background(), &out); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(out.String()))
	if err != nil {
		t.Fatalf("the text does not parse: %v\n%s", err, out.String())
	}
	return families, out.String()
}

// scrapeRead waits for a scrape showing both parts read.
func (f *trafficFixture) scrapeRead(t *testing.T) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams, text := f.scrape(t)
		if fams["merlin_ipvs_stats_age_seconds"] != nil && fams["merlin_counters_age_seconds"] != nil {
			return fams, text
		}
		if time.Now().After(deadline) {
			t.Fatalf("no background read within 10s:\n%s", text)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func seriesValue(t *testing.T, families map[string]*dto.MetricFamily, text, name string, labels ...string) float64 {
	t.Helper()
	f := families[name]
	if f == nil {
		t.Fatalf("no %s in\n%s", name, text)
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
	t.Fatalf("no %s%v in\n%s", name, labels, text)
	return 0
}

// The collector names the kernel's and the eBPF counters by the plan's
// service IDs and server addresses, and leaves out services not merlin's.
func TestTrafficCollectorLabels(t *testing.T) {
	f := newTrafficFixture(t, nil, TrafficOptions{BackendFamilies: BackendFamilyNames()})
	families, text := f.scrapeRead(t)
	value := func(name string, labels ...string) float64 { return seriesValue(t, families, text, name, labels...) }
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
	if v := value("merlin_ipvs_stats_up"); v != 1 {
		t.Errorf("merlin_ipvs_stats_up %v", v)
	}
	if n := len(families["merlin_ipvs_service_connections_total"].Metric); n != 1 {
		t.Errorf("%d services exported: the foreign one must not be", n)
	}
	if families["merlin_ipvs_service_connections_total"].GetType().String() != "COUNTER" || families["merlin_ipvs_backend_weight"].GetType().String() != "GAUGE" {
		t.Errorf("types: %v", families["merlin_ipvs_service_connections_total"].GetType())
	}
}

// With the default choice only the dashboard's per-backend families are
// exported; per-service and per-VIP families always are.
func TestTrafficDefaultBackendFamilies(t *testing.T) {
	f := newTrafficFixture(t, nil, TrafficOptions{BackendFamilies: DefaultBackendFamilies})
	families, text := f.scrapeRead(t)
	for _, name := range BackendFamilyNames() {
		if strings.HasPrefix(name, "merlin_passive_") {
			continue // no server has passive health here
		}
		if got, want := families[name] != nil, slices.Contains(DefaultBackendFamilies, name); got != want {
			t.Errorf("%s exported: %v, want %v", name, got, want)
		}
	}
	if v := seriesValue(t, families, text, "merlin_tc_forwarded_packets_total", "service", "web", "server", "198.19.0.1:8080"); v != 3 {
		t.Errorf("forwarded packets %v", v)
	}
	for _, name := range []string{"merlin_ipvs_service_incoming_bytes_total", "merlin_xdp_bytes_total"} {
		if families[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	f.stop()
	none := newTrafficFixture(t, nil, TrafficOptions{})
	families, _ = none.scrapeRead(t)
	for _, name := range BackendFamilyNames() {
		if families[name] != nil {
			t.Errorf("%s exported with no per-backend family chosen", name)
		}
	}
}

// blockingKernel's reads wait until released; it counts them.
type blockingKernel struct {
	fakeKernel
	release chan struct{}
	reads   atomic.Int32
}

func (k *blockingKernel) StatsEach(ctx context.Context, keep func(ipvs.ServiceKey) bool, fn func(ipvs.ServiceStats)) error {
	k.reads.Add(1)
	select {
	case <-k.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return k.fakeKernel.StatsEach(ctx, keep, fn)
}

// A scrape never reads the kernel: while a background read hangs, scrapes
// answer with what was read before and its growing age, and the counters
// read anew on their own.
func TestScrapeDoesNotWaitForTheKernel(t *testing.T) {
	k := &blockingKernel{release: make(chan struct{})}
	f := newTrafficFixture(t, k, TrafficOptions{BackendFamilies: DefaultBackendFamilies})
	families, text := f.scrape(t)
	if v := seriesValue(t, families, text, "merlin_ipvs_stats_up"); v != 0 || families["merlin_ipvs_service_connections_total"] != nil {
		t.Fatalf("before any read: merlin_ipvs_stats_up %v and\n%s", v, text)
	}
	st := testState(t, svcAt("web", "198.18.0.1", "rr"))
	withServer(t, st, "web", "198.19.0.1:8080", 1)
	k.table = []ipvs.VirtualServer{PlanService("web", st.Services["web"], PlanChecks(st.Services["web"], nil), HealthView{States: map[health.Check]health.State{}}, planNow).Virtual}
	k.release <- struct{}{} // one read completes; the next one hangs
	families, text = f.scrapeRead(t)
	first := seriesValue(t, families, text, "merlin_ipvs_stats_age_seconds")
	for k.reads.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	for {
		families, text = f.scrape(t)
		if seriesValue(t, families, text, "merlin_ipvs_stats_age_seconds") > first+0.05 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if v := seriesValue(t, families, text, "merlin_ipvs_service_connections_total", "service", "web"); v != 7 {
		t.Errorf("service connections %v while the next read hangs", v)
	}
	f.fc.setSnap(xdpstats.Snapshot{VIPs: map[xdpstats.VIPKey]xdpstats.Counters{f.fc.keys.VIPs[0]: {Packets: 9, SYN: 2}}})
	for {
		families, text = f.scrape(t)
		if seriesValue(t, families, text, "merlin_xdp_syn_total", "service", "web") == 2 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestParseBackendFamilies(t *testing.T) {
	for in, want := range map[string][]string{
		"":     nil,
		"none": nil,
		"merlin_tc_reply_rst_total, merlin_ipvs_backend_weight": {"merlin_ipvs_backend_weight", "merlin_tc_reply_rst_total"},
		"default,merlin_ipvs_backend_weight":                    slices.Sorted(slices.Values(DefaultBackendFamilies)),
	} {
		got, err := ParseBackendFamilies(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%q: %v, %v; want %v", in, got, err, want)
		}
	}
	if got, _ := ParseBackendFamilies("all"); len(got) != len(BackendFamilyNames()) {
		t.Errorf("all: %v", got)
	}
	_, err := ParseBackendFamilies("merlin_ipvs_backend_weight,merlin_server_up" + strings.Repeat("x", 200))
	if err == nil || !strings.Contains(err.Error(), `"merlin_server_upxxx`) || len(err.Error()) > 250 {
		t.Errorf("unknown family: %v", err)
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

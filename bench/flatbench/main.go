// Command flatbench measures what one change costs each part of the node's
// per-change path — the node planner (node.NodePlanner), the node's report
// into metrics and node status (as the runner keeps it: filled, bounded,
// then cloned and compared with the last) and every sink given the plan
// (VIP addresses, BGP routes, eBPF counter keys, path probes, server
// drains) — at a small and a large table, every server health-checked, and says FAIL for each
// part whose per-change time grows with the table. The change is what the
// BGP sink withdraws a VIP for: a service losing all its servers (and
// getting them back). The sinks drive fakes that only record, so the time
// is merlin's own. Pure Go; runs anywhere (make test runs a short form).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime/pprof"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

func main() {
	small := flag.Int("small", 100, "services in the small table")
	large := flag.Int("large", 10000, "services in the large table")
	dests := flag.Int("dests", 10, "real servers per service")
	changes := flag.Int("changes", 400, "changes measured per table")
	limit := flag.Float64("limit", 1.5, "largest p50 ratio (large / small) a part may have and count as flat")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	reportOnly := flag.Bool("report-only", false, "print the verdicts but exit 0 when parts grow (make test's short form: timings are not asserted in tests)")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "flatbench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	err := run(*small, *large, *dests, *changes, *limit)
	if errors.Is(err, errGrows) && *reportOnly {
		fmt.Println("\n" + err.Error() + " (reported only)")
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "\nflatbench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(small, large, dests, changes int, limit float64) error {
	s, err := measure(small, dests, changes)
	if err != nil {
		return err
	}
	l, err := measure(large, dests, changes)
	if err != nil {
		return err
	}
	fmt.Printf("per-change time of each part of the node's path, %d changes each (a service losing or regaining all %d servers)\n\n", changes, dests)
	fmt.Printf("| part | p50 at %d | p99 at %d | p50 at %d | p99 at %d | p50 ratio | growth exponent | |\n|---|---:|---:|---:|---:|---:|---:|---|\n", small, small, large, large)
	var grows []string
	for _, part := range parts {
		ratio := float64(pct(l[part], 50)) / float64(max(pct(s[part], 50), 1))
		verdict := "flat"
		if ratio > limit {
			verdict = fmt.Sprintf("**FAIL: grows with the table** (> %.1f)", limit)
			grows = append(grows, part)
		}
		// 0: the same at any size; 1: in proportion to the table.
		exponent := math.Log(ratio) / math.Log(float64(large)/float64(small))
		fmt.Printf("| %s | %s | %s | %s | %s | %.2f | %.2f | %s |\n", part, pct(s[part], 50), pct(s[part], 99), pct(l[part], 50), pct(l[part], 99), ratio, exponent, verdict)
	}
	if len(grows) > 0 {
		return fmt.Errorf("%w in %v", errGrows, grows)
	}
	return nil
}

var errGrows = errors.New("FAIL: per-change time grows with the table")

// parts are the measured parts, in the order of a pass.
var parts = []string{"planner", "node status", "vips", "bgp", "counters", "path-probes", "server-drain", "whole pass"}

type fixture struct {
	plans       map[string]*node.ServicePlan
	full, empty map[string]*node.ServicePlan // each service with its servers, and without
	sinks       []node.Sink
	planner     node.NodePlanner
	report      *node.NodeReport
	status      *types.NodeStatus
}

// measure times changes on a table of n services; each change swaps one
// random service between its full and its empty plan, then plans the node
// and gives every sink the plan, as a pass does.
func measure(n, dests, changes int) (map[string][]time.Duration, error) {
	f, err := newFixture(n, dests)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	// changed is what the runner tells the sinks changed since their last
	// plan (nil the first time: every service), with their VIPs.
	pass := func(changed map[string]bool) (map[string]time.Duration, error) {
		took := map[string]time.Duration{}
		start := time.Now()
		np, ch := f.planner.Plan(f.plans, changed, node.NodeInputs{})
		took[parts[0]] = time.Since(start)
		t := time.Now()
		f.reportStatus(np, ch)
		took[parts[1]] = time.Since(t)
		plan := &node.Plan{Revision: 1, Services: f.plans, Node: np, Changed: changed}
		if changed != nil {
			plan.ChangedVIPs = map[netip.Addr]bool{}
			for id := range changed {
				if addr, ok := f.plans[id].VIP(); ok {
					plan.ChangedVIPs[addr] = true
				}
			}
		}
		for i, s := range f.sinks {
			t = time.Now()
			if err := s.Set(ctx, plan); err != nil {
				return nil, fmt.Errorf("sink %s: %w", s.Name(), err)
			}
			took[parts[i+2]] = time.Since(t)
		}
		took["whole pass"] = time.Since(start)
		return took, nil
	}
	if _, err := pass(nil); err != nil { // the sinks take the first plan
		return nil, err
	}
	out := map[string][]time.Duration{}
	ids := slices.Sorted(func(yield func(string) bool) {
		for id := range f.plans {
			if !yield(id) {
				return
			}
		}
	})
	for range changes {
		id := ids[rand.IntN(len(ids))]
		if f.plans[id] == f.full[id] {
			f.plans[id] = f.empty[id]
		} else {
			f.plans[id] = f.full[id]
		}
		took, err := pass(map[string]bool{id: true})
		if err != nil {
			return nil, err
		}
		for k, v := range took {
			out[k] = append(out[k], v)
		}
	}
	return out, nil
}

func newFixture(n, dests int) (*fixture, error) {
	f := &fixture{plans: map[string]*node.ServicePlan{}, full: map[string]*node.ServicePlan{}, empty: map[string]*node.ServicePlan{}}
	for i := range n {
		full, empty, err := servicePlans(i, dests)
		if err != nil {
			return nil, err
		}
		id := full.ID
		f.plans[id], f.full[id], f.empty[id] = full, full, empty
	}
	traffic := node.NewTraffic(nil, recordingCounters{}, node.TrafficOptions{})
	f.sinks = []node.Sink{
		node.NewVIPSink(recordingVIPs{}),
		node.NewBGPSink(recordingAnnouncer{}, 0),
		traffic.Sink(),
		node.NewPathProbeSink(emptyIPVS{}),
		node.NewServerDrainSink(emptyIPVS{}),
	}
	f.report, f.status = node.NewNodeReport(node.NewNodeMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler)), &types.NodeStatus{}
	if len(f.sinks)+3 != len(parts) {
		return nil, fmt.Errorf("%d sinks for %d parts", len(f.sinks), len(parts))
	}
	return f, nil
}

// reportStatus reports the node plan into metrics and node status as the
// runner does: the status filled (bounded) on a clone of the last, and
// compared with it.
func (f *fixture) reportStatus(np node.NodePlan, ch node.NodeChange) {
	next := proto.Clone(f.status).(*types.NodeStatus)
	f.report.Report(np, ch, f.plans, next)
	if !proto.Equal(next, f.status) {
		f.status = next
	}
}

// servicePlans plans service i (a NAT service with dests servers) with its
// servers and without them.
func servicePlans(i, dests int) (full, empty *node.ServicePlan, err error) {
	svc, err := model.NormalizeService(&types.VirtualService{Id: fmt.Sprintf("svc%05d", i),
		Key:    &types.VirtualService_Key{Ip: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}).String(), Port: 80, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: "wlc"},
		Defaults: &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("tcp://:8080"),
			Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second), UpThreshold: 1, DownThreshold: 1}}})
	if err != nil {
		return nil, nil, err
	}
	servers := map[string]*types.RealServer{}
	for j := range dests {
		rs, err := model.NormalizeServer(&types.RealServer{ServiceID: svc.Id,
			Key:    &types.RealServer_Key{Ip: netip.AddrFrom4([4]byte{198, 19, byte(j), byte(i % 250)}).String(), Port: uint32(8000 + i/250)},
			Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(1), Forward: types.ForwardMethod_MASQ}}, svc)
		if err != nil {
			return nil, nil, err
		}
		servers[model.ServerKeyString(rs.Key)] = rs
	}
	plan := func(ss *store.ServiceState) *node.ServicePlan {
		checks := node.PlanChecks(ss, nil)
		up := node.HealthView{Initial: map[health.Check]bool{}}
		for _, c := range checks.Servers {
			up.Initial[c.Check] = true
		}
		return node.PlanService(svc.Id, ss, checks, up, time.Unix(1e9, 0))
	}
	full = plan(&store.ServiceState{Service: svc, Servers: servers})
	empty = plan(&store.ServiceState{Service: svc, Servers: map[string]*types.RealServer{}})
	if full.Err != nil {
		return nil, nil, full.Err
	}
	return full, empty, nil
}

type recordingVIPs struct{}

func (recordingVIPs) SetVIPs(context.Context, []netip.Addr) error { return nil }

type recordingAnnouncer struct{}

func (recordingAnnouncer) Set(context.Context, []bgp.Route) error    { return nil }
func (recordingAnnouncer) Update(context.Context, bgp.Changes) error { return nil }

type recordingCounters struct{}

func (recordingCounters) Set(xdpstats.Keys) error          { return nil }
func (recordingCounters) Update(_, _ xdpstats.Keys) error  { return nil }
func (recordingCounters) Read() (xdpstats.Snapshot, error) { return xdpstats.Snapshot{}, nil }
func (recordingCounters) ReadEach(xdpstats.Visit) error    { return nil }
func (recordingCounters) Status() xdpstats.Status          { return xdpstats.Status{On: true} }

// emptyIPVS is a kernel with nothing in it.
type emptyIPVS struct{}

func (emptyIPVS) Table(context.Context) ([]ipvs.VirtualServer, error) { return nil, nil }
func (emptyIPVS) Lookup(context.Context, ipvs.ServiceKey) (*ipvs.VirtualServer, error) {
	return nil, nil
}
func (emptyIPVS) Apply(context.Context, []ipvs.Op) error { return nil }
func (emptyIPVS) Destinations(context.Context, ipvs.ServiceKey) ([]ipvs.DestinationStatus, error) {
	return nil, nil
}

func pct(v []time.Duration, p int) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

package node

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/types"
)

// randomNodeFacingPlan is service id with random values of everything the
// node plan reads: its VIP (one of vips, or a firewall mark), announcement
// options, a refusal, servers checked or not, up or down, weights, a
// healthy threshold it is below.
func randomNodeFacingPlan(rng *rand.Rand, id string, vips int) *ServicePlan {
	v := rng.IntN(vips)
	svc := &types.VirtualService{Id: id, Key: &types.VirtualService_Key{Ip: fmt.Sprintf("198.18.%d.%d", v/250, 1+v%250), Port: 80}}
	if rng.IntN(10) == 0 {
		svc.Key = &types.VirtualService_Key{Fwmark: 7}
	}
	if rng.IntN(3) == 0 {
		svc.Announce = &types.Announce{Always: rng.IntN(2) == 0, Communities: []string{fmt.Sprintf("65000:%d", rng.IntN(3))},
			LinkBandwidth: wrapperspb.Bool(rng.IntN(2) == 0)}
	}
	sp := &ServicePlan{ID: id, State: &store.ServiceState{Service: svc}}
	if rng.IntN(12) == 0 {
		sp.Err = errors.New("refused")
		return sp
	}
	sp.AllDown = true
	for j := range rng.IntN(4) {
		key := fmt.Sprintf("198.19.0.%d:80", j)
		s := ServerPlan{Key: key, Checked: rng.IntN(2) == 0, Up: rng.IntN(3) > 0, Weight: uint32(rng.IntN(3))}
		if s.Checked && rng.IntN(2) == 0 {
			s.Known, s.Health = true, health.State{Up: s.Up, Since: time.Unix(int64(1e9+rng.IntN(5)), 0), LastError: "refused"}
		}
		sp.Servers = append(sp.Servers, s)
		sp.Virtual.Destinations = append(sp.Virtual.Destinations, ipvs.Destination{Config: ipvs.DestinationConfig{Weight: s.Weight}})
		sp.AllDown = sp.AllDown && !s.Up
	}
	sp.AllDown = sp.AllDown && len(sp.Servers) > 0
	if rng.IntN(5) == 0 {
		sp.Below = &BelowThreshold{Healthy: 1, Total: 3, Need: 2, Action: types.BelowThresholdAction(rng.IntN(3)), Since: time.Unix(1e9, 0)}
	}
	return sp
}

// randomChanges replaces, adds or removes one to three services' plans.
func randomChanges(rng *rand.Rand, ids []string, plans map[string]*ServicePlan) map[string]bool {
	changed := map[string]bool{}
	for range 1 + rng.IntN(3) {
		id := ids[rng.IntN(len(ids))]
		changed[id] = true
		if rng.IntN(5) == 0 {
			delete(plans, id)
		} else {
			plans[id] = randomNodeFacingPlan(rng, id, max(5, len(ids)/2)) // services share VIPs
		}
	}
	return changed
}

func randomNodeInputs(rng *rand.Rand, ids []string) NodeInputs {
	in := NodeInputs{LinkBandwidth: LinkBandwidthInputs{PerWeight: MinLinkBandwidth}}
	switch rng.IntN(6) {
	case 0:
		in.NotReady = "waiting"
	case 1:
		in.Drain = DrainPhase(rng.IntN(4))
	case 2:
		in.Failed = map[string]bool{ids[rng.IntN(len(ids))]: true}
	case 3:
		in.LinkBandwidth.Default = true
	}
	return in
}

// TestNodePlannerEqualsPlanNode: a plan made a change at a time is the
// plan PlanNode makes of all services, after each of 3,000 random steps
// (services coming, changing, going; the node's inputs now and then), and
// a plan returned earlier is never changed by the later ones — with 10
// services, and with 600 (lists of many chunks).
func TestNodePlannerEqualsPlanNode(t *testing.T) {
	few := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	var many []string
	for i := range 600 {
		many = append(many, fmt.Sprintf("s%03d", i))
	}
	for _, ids := range [][]string{few, many} {
		t.Run(fmt.Sprint(len(ids)), func(t *testing.T) { testNodePlanner(t, ids) })
	}
}

func testNodePlanner(t *testing.T, ids []string) {
	rng := rand.New(rand.NewPCG(9, 10))
	var planner NodePlanner
	plans := map[string]*ServicePlan{}
	in := NodeInputs{}
	var prev, prevWant NodePlan
	incremental := 0
	for step := range 3000 {
		changed := randomChanges(rng, ids, plans)
		if rng.IntN(15) == 0 {
			in = randomNodeInputs(rng, ids)
		}
		if rng.IntN(30) == 0 {
			changed = nil
		}
		if changed != nil && planner.planned && sameInputs(in, planner.in) {
			incremental++
		}
		got, _ := planner.Plan(plans, changed, in)
		want := PlanNode(plans, in)
		if diff := nodePlanDiff(got, want); diff != "" {
			t.Fatalf("step %d: %s", step, diff)
		}
		if diff := nodePlanDiff(prev, prevWant); diff != "" {
			t.Fatalf("step %d: the plan of step %d changed: %s", step, step-1, diff)
		}
		prev, prevWant = got, want
	}
	if incremental < 2000 {
		t.Errorf("%d of 3,000 plans made a change at a time", incremental)
	}
}

// nodePlanDiff says how two node plans differ (empty lists are nil).
func nodePlanDiff(a, b NodePlan) string {
	switch {
	case a.Ready != b.Ready || a.LinkBandwidthPerWeight != b.LinkBandwidthPerWeight:
		return fmt.Sprintf("ready %v/%v, bandwidth factor %v/%v", a.Ready, b.Ready, a.LinkBandwidthPerWeight, b.LinkBandwidthPerWeight)
	case !slices.Equal(a.VIPs.Slice(), b.VIPs.Slice()):
		return fmt.Sprintf("VIPs %v, want %v", a.VIPs.Slice(), b.VIPs.Slice())
	case !slices.Equal(a.Down.Slice(), b.Down.Slice()):
		return fmt.Sprintf("down %v, want %v", a.Down.Slice(), b.Down.Slice())
	case !slices.EqualFunc(a.VIPStates.Slice(), b.VIPStates.Slice(), func(x, y VIPState) bool { return reflect.DeepEqual(x, y) }):
		return fmt.Sprintf("VIP states %+v, want %+v", a.VIPStates.Slice(), b.VIPStates.Slice())
	case !slices.EqualFunc(a.Health.Slice(), b.Health.Slice(), func(x, y *types.ServerHealth) bool { return proto.Equal(x, y) }):
		return fmt.Sprintf("health %v, want %v", a.Health.Slice(), b.Health.Slice())
	case !slices.EqualFunc(a.Below.Slice(), b.Below.Slice(), func(x, y *types.ServiceBelowThreshold) bool { return proto.Equal(x, y) }):
		return fmt.Sprintf("below %v, want %v", a.Below.Slice(), b.Below.Slice())
	}
	return ""
}

// TestNodeReportIncrementalEqualsWhole: reporting a plan a change at a
// time leaves the same series (server health, services down and below
// their thresholds, VIP states and bandwidths, VIP counts) and the same
// node status (and servers down) as reporting the whole plan to fresh metrics, after each
// of 1,500 random steps.
func TestNodeReportIncrementalEqualsWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	ids := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	var planner NodePlanner
	reg := prometheus.NewRegistry()
	incMetrics := NewNodeMetrics(reg)
	inc := nodeReport{m: incMetrics, log: slog.New(slog.DiscardHandler)}
	plans := map[string]*ServicePlan{}
	in := NodeInputs{}
	for step := range 1500 {
		changed := randomChanges(rng, ids, plans)
		if rng.IntN(20) == 0 {
			in = randomNodeInputs(rng, ids)
		}
		np, ch := planner.Plan(plans, changed, in)
		inc.report(np, ch, plans)
		wholeReg := prometheus.NewRegistry()
		wholeMetrics := NewNodeMetrics(wholeReg)
		whole := nodeReport{m: wholeMetrics, log: slog.New(slog.DiscardHandler)}
		whole.report(np, NodeChange{}, plans)
		if got, want := seriesText(t, reg, incMetrics), seriesText(t, wholeReg, wholeMetrics); got != want {
			t.Fatalf("step %d: series\n%s\nwant\n%s", step, got, want)
		}
		var incStatus, wholeStatus types.NodeStatus
		inc.fillStatus(&incStatus, np)
		whole.fillStatus(&wholeStatus, np)
		if !proto.Equal(&incStatus, &wholeStatus) || !slices.EqualFunc(inc.down.Slice(), whole.down.Slice(), func(a, b *types.ServerHealth) bool { return proto.Equal(a, b) }) {
			t.Fatalf("step %d: status %v, servers down %v; want %v, %v", step, &incStatus, inc.down.Slice(), &wholeStatus, whole.down.Slice())
		}
	}
}

// seriesText is the node-plan series served for reg and m, one per line,
// sorted.
func seriesText(t *testing.T, reg *prometheus.Registry, m *NodeMetrics) string {
	t.Helper()
	var lines []string
	for _, f := range scrape(t, reg, m) {
		switch f.GetName() {
		case "merlin_server_up", "merlin_service_all_servers_down", "merlin_service_below_threshold", "merlin_vip_announced",
			"merlin_vip_link_bandwidth_bytes", "merlin_vips":
		default:
			continue
		}
		for _, m := range f.GetMetric() {
			line := f.GetName()
			for _, l := range m.GetLabel() {
				line += fmt.Sprintf(" %s=%q", l.GetName(), l.GetValue())
			}
			lines = append(lines, fmt.Sprintf("%s %v", line, m.GetGauge().GetValue()))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

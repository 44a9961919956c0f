package node

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/types"
)

// randomServicePlan is service id on one of a few VIPs (two services may
// share a VIP address on other ports) with a random pick of a small pool
// of servers (shared between services) by every forwarding method, with
// passive health or without.
func randomServicePlan(rng *rand.Rand, id string) *ServicePlan {
	key := ipvs.ServiceKey{Protocol: ipvs.TCP, Address: mustAddr(fmt.Sprintf("198.18.0.%d", 1+rng.IntN(3))), Port: uint16(80 + rng.IntN(3))}
	if rng.IntN(8) == 0 {
		key = ipvs.ServiceKey{Family: ipvs.IPv4, FWMark: uint32(1 + rng.IntN(3))}
	}
	svc := &types.VirtualService{Id: id}
	if rng.IntN(2) == 0 {
		svc.PassiveHealth = &types.PassiveHealth{Enabled: wrapperspb.Bool(true)}
	}
	sp := &ServicePlan{ID: id, State: &store.ServiceState{Service: svc}, Checks: ServiceChecks{Servers: map[string]ServerCheck{}},
		Virtual: ipvs.VirtualServer{Service: ipvs.Service{Key: key.Canonical()}}}
	methods := []ipvs.ForwardMethod{ipvs.Masquerade, ipvs.Masquerade, ipvs.Tunnel, ipvs.DirectRoute}
	for j := range 6 {
		if rng.IntN(2) == 0 {
			continue
		}
		d := ipvs.Destination{Key: ipvs.DestinationKey{Address: mustAddr(fmt.Sprintf("198.19.0.%d", j)), Port: uint16(8080 + j%2)},
			Config: ipvs.DestinationConfig{Forward: methods[rng.IntN(len(methods))], TunnelType: ipvs.TunnelIPIP}}
		sp.Virtual.Destinations = append(sp.Virtual.Destinations, d)
		if rng.IntN(2) == 0 {
			sp.Checks.Servers[d.Key.String()] = ServerCheck{Check: health.Check{Kind: health.TCP}}
		}
	}
	return sp
}

// The sink's index and keys, kept a change at a time, are always what
// PlanCounterKeys makes of the whole plan: labels by the smallest service
// ID claiming a key, passive judges by that claim, keys added and removed
// as services come, change and go.
func TestCountersSinkIncrementalEqualsWholePlan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	fc := &fakeCounters{}
	tr := NewTraffic(nil, fc, TrafficOptions{})
	plans := map[string]*ServicePlan{}
	ids := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	changed := map[string]bool{}
	for step := range 2000 {
		id := ids[rng.IntN(len(ids))]
		if rng.IntN(5) == 0 {
			delete(plans, id)
		} else {
			plans[id] = randomServicePlan(rng, id)
		}
		changed[id] = true
		p := &Plan{Services: plans, Changed: changed}
		if step == 0 || rng.IntN(50) == 0 {
			p.Changed = nil // a full plan now and then, as after a failure
		}
		if rng.IntN(3) > 0 && p.Changed != nil {
			continue // changes pile up between sink calls
		}
		if err := tr.Sink().Set(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		changed = map[string]bool{}
		wantKeys, want := PlanCounterKeys(p)
		got := tr.index.snapshot()
		if !maps.Equal(got.VIPs, want.VIPs) || !maps.Equal(got.Servers, want.Servers) || !maps.Equal(got.Services, want.Services) ||
			!maps.EqualFunc(got.Passive, want.Passive, func(a, b PassiveJudge) bool { return a == b }) {
			t.Fatalf("step %d: index\n got %+v\nwant %+v", step, got, want)
		}
		if !sameKeys(fc.keys, wantKeys) {
			t.Fatalf("step %d: counter keys\n got %+v\nwant %+v", step, fc.keys, wantKeys)
		}
		if !maps.EqualFunc(tr.index.passiveJudges(), want.Passive, func(a, b PassiveJudge) bool { return a == b }) {
			t.Fatalf("step %d: judged servers differ", step)
		}
	}
}

func sameKeys(a, b xdpstats.Keys) bool {
	cmpVIP := func(x, y xdpstats.VIPKey) int { return compareStrings(x.String(), y.String()) }
	cmpServer := func(x, y xdpstats.ServerKey) int { return compareStrings(x.String(), y.String()) }
	return slices.Equal(slices.SortedFunc(slices.Values(a.VIPs), cmpVIP), slices.SortedFunc(slices.Values(b.VIPs), cmpVIP)) &&
		slices.Equal(slices.SortedFunc(slices.Values(a.Servers), cmpServer), slices.SortedFunc(slices.Values(b.Servers), cmpServer))
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// A service whose plan is replaced by one with the same servers (a weight
// changed) touches no counter key: its counts go on.
func TestCountersSinkLeavesUnchangedKeys(t *testing.T) {
	fc := &fakeCounters{}
	tr := NewTraffic(nil, fc, TrafficOptions{})
	rng := rand.New(rand.NewPCG(3, 4))
	web := randomServicePlan(rng, "web")
	web.Virtual.Destinations = append(web.Virtual.Destinations, ipvs.Destination{Key: ipvs.DestinationKey{Address: mustAddr("198.19.1.1"), Port: 80},
		Config: ipvs.DestinationConfig{Forward: ipvs.Masquerade, Weight: 1}})
	plans := map[string]*ServicePlan{"web": web}
	if err := tr.Sink().Set(context.Background(), &Plan{Services: plans}); err != nil {
		t.Fatal(err)
	}
	again := *web
	again.Virtual.Destinations = slices.Clone(web.Virtual.Destinations)
	again.Virtual.Destinations[len(again.Virtual.Destinations)-1].Config.Weight = 5
	plans["web"] = &again
	if err := tr.Sink().Set(context.Background(), &Plan{Services: plans, Changed: map[string]bool{"web": true}}); err != nil {
		t.Fatal(err)
	}
	if fc.updates != 0 {
		t.Fatalf("%d key updates for a weight change", fc.updates)
	}
	delete(plans, "web")
	if err := tr.Sink().Set(context.Background(), &Plan{Services: plans, Changed: map[string]bool{"web": true}}); err != nil {
		t.Fatal(err)
	}
	if fc.updates != 1 || len(fc.keys.VIPs)+len(fc.keys.Servers) != 0 {
		t.Fatalf("after the service went: %d updates, keys %+v", fc.updates, fc.keys)
	}
}

// snapshot is a copy of the whole index.
func (p *planIndex) snapshot() CounterIndex {
	p.mu.Lock()
	defer p.mu.Unlock()
	return CounterIndex{VIPs: maps.Clone(p.idx.VIPs), Servers: maps.Clone(p.idx.Servers), Services: maps.Clone(p.idx.Services), Passive: maps.Clone(p.idx.Passive)}
}

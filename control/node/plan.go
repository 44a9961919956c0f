package node

import (
	"maps"
	"net/netip"
	"time"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// The planner: pure functions from the desired state, health results, the
// kernel's state at hand and a clock reading passed in, to what this node
// should program. No goroutines, no clock reads, no I/O; the runner
// (runner.go) owns all of that and calls these.

// ServerCheck is the health check of one server and how its result is used.
type ServerCheck struct {
	Check     health.Check
	Startup   StartupHint // what the kernel says of the server before the first result
	SlowStart time.Duration
	// KernelWeight is the server's weight in the kernel when the check was
	// planned: a restart in the middle of a slow start resumes from it.
	KernelWeight uint32
}

// StartupHint is the evidence a server gives about its check's state before
// the first probe result: the weight merlin left in the kernel.
type StartupHint uint8

// Startup evidence, weakest first.
const (
	NoHint   StartupHint = iota // not in the kernel, or configured at weight 0
	HintUp                      // in the kernel with a weight
	HintDown                    // in the kernel at weight 0 while configured higher, or startup: DOWN
)

// ServiceChecks is the health checks of one service's servers (by server
// IP:PORT) and the servers whose check cannot be built.
type ServiceChecks struct {
	Servers map[string]ServerCheck
	Errors  map[string]error
}

// PlanChecks works out the checks of a service's servers. kernel is the
// kernel's entry for the service (nil: none), read for startup hints.
func PlanChecks(ss *store.ServiceState, kernel *ipvs.VirtualServer) ServiceChecks {
	var sc ServiceChecks
	for key, srv := range ss.Servers {
		c, ok, err := HealthCheckOf(srv, ss.Service)
		if err != nil {
			if sc.Errors == nil {
				sc.Errors = map[string]error{}
			}
			sc.Errors[key] = err
			continue
		}
		if !ok {
			continue
		}
		if sc.Servers == nil {
			sc.Servers = map[string]ServerCheck{}
		}
		h := model.EffectiveHealthCheck(srv, ss.Service)
		hint, kw := startupHint(srv, h, kernel)
		sc.Servers[key] = ServerCheck{Check: c, Startup: hint, SlowStart: h.GetSlowStart().AsDuration(), KernelWeight: kw}
	}
	return sc
}

func startupHint(srv *types.RealServer, h *types.RealServer_HealthCheck, kernel *ipvs.VirtualServer) (StartupHint, uint32) {
	var kw uint32
	found := false
	if kernel != nil {
		addr, _ := netip.ParseAddr(srv.GetKey().GetIp())
		for _, d := range kernel.Destinations {
			if d.Key.Address == addr && d.Key.Port == uint16(srv.GetKey().GetPort()) {
				kw, found = d.Config.Weight, true
			}
		}
	}
	switch {
	case h.GetStartup() == types.RealServer_DOWN:
		return HintDown, kw
	case srv.GetConfig().GetWeight().GetValue() == 0 || !found:
		return NoHint, kw
	case kw > 0:
		return HintUp, kw
	}
	return HintDown, kw
}

// Equal reports whether two services' checks are the same.
func (a ServiceChecks) Equal(b ServiceChecks) bool {
	return maps.Equal(a.Servers, b.Servers) && len(a.Errors) == len(b.Errors)
}

// SameWanted reports whether two services' checks want the same of the
// health monitor — the same checks, with the same startup evidence where
// no state was decided yet (WantedChecks reads nothing else): a weight
// change moves the kernel weights the checks were planned with, and must
// not hand the monitor every check of the node again.
func (a ServiceChecks) SameWanted(b ServiceChecks, decided func(health.Check) bool) bool {
	return maps.EqualFunc(a.Servers, b.Servers, func(x, y ServerCheck) bool {
		return x.Check == y.Check && (x.Startup == y.Startup || decided(x.Check))
	})
}

// WantedChecks is every check the node runs, with the state each starts in
// before its first result. What merlin decided of a check before (decided,
// by check identity: it survives restarts) comes first. Without it the
// kernel's weights are the evidence: a check shared by several servers
// starts down if any of them says so — a restart must never put traffic
// back on a server that merlin had taken down. Without any evidence a
// check starts up (a new server).
func WantedChecks(all map[string]ServiceChecks, decided map[string]bool) map[health.Check]bool {
	want := map[health.Check]bool{}
	for _, sc := range all {
		for _, c := range sc.Servers {
			if up, ok := decided[c.Check.Identity()]; ok {
				want[c.Check] = up
				continue
			}
			up, seen := want[c.Check]
			want[c.Check] = (up || !seen) && c.Startup != HintDown
		}
	}
	return want
}

// HealthView is what the planner knows of health: the state of every check
// the monitor has results for, and the initial state of the others.
type HealthView struct {
	States  map[health.Check]health.State
	Initial map[health.Check]bool
}

// serverUp: a check with results decides; before them, its initial state.
func (h HealthView) serverUp(c health.Check) (st health.State, known, up bool) {
	if st, ok := h.States[c]; ok {
		return st, true, st.Up
	}
	return health.State{}, false, h.Initial[c]
}

// ServerPlan is one server as this node programs it.
type ServerPlan struct {
	Key     string // IP:PORT
	Checked bool
	Up      bool
	Weight  uint32 // effective: 0 when down, ramping in slow start
	Health  health.State
	Known   bool // Health holds a probe result
}

// ServicePlan is one desired service as this node programs it.
type ServicePlan struct {
	ID      string
	State   *store.ServiceState // what it was planned from
	Checks  ServiceChecks
	Virtual ipvs.VirtualServer // with effective weights; valid when Err is nil
	Err     error              // the service cannot be programmed
	Servers []ServerPlan       // in Virtual.Destinations order (which adds the sorry servers while they serve)
	// AllDown: it has servers and every one of them is down.
	AllDown bool
	// NextChange: when slow start next changes a weight, or a healthy
	// threshold's hold-down ends (zero: never).
	NextChange time.Time
	// Below: the service is below its healthy threshold (nil: it is not,
	// or has none).
	Below *BelowThreshold
}

// PlanService gives each server of a service its effective weight (0 while
// its check is down, a ramp during slow start, the configured weight
// otherwise) and converts the service to the kernel's terms.
func PlanService(id string, ss *store.ServiceState, checks ServiceChecks, hv HealthView, now time.Time) *ServicePlan {
	p := &ServicePlan{ID: id, State: ss, Checks: checks}
	weights := make(map[ipvs.DestinationKey]ServerPlan, len(ss.Servers))
	p.Virtual, p.Err = ToIPVS(ss, func(key string, dest ipvs.DestinationKey, srv *types.RealServer) uint32 {
		sp := p.planServer(key, srv, hv, now)
		weights[dest] = sp
		return sp.Weight
	})
	if p.Err != nil {
		return p
	}
	p.AllDown = len(p.Virtual.Destinations) > 0
	p.Servers = make([]ServerPlan, 0, len(p.Virtual.Destinations))
	for _, d := range p.Virtual.Destinations {
		sp := weights[d.Key]
		p.Servers = append(p.Servers, sp)
		p.AllDown = p.AllDown && !sp.Up
	}
	return p
}

// planServer plans server srv, key its name in the service's servers (the
// desired state's string, shared: 100,000 servers make no new one).
func (p *ServicePlan) planServer(key string, srv *types.RealServer, hv HealthView, now time.Time) ServerPlan {
	w := srv.GetConfig().GetWeight().GetValue()
	sp := ServerPlan{Key: key, Up: true, Weight: w}
	sc, ok := p.Checks.Servers[sp.Key]
	if !ok {
		return sp
	}
	sp.Checked = true
	sp.Health, sp.Known, sp.Up = hv.serverUp(sc.Check)
	switch {
	case w == 0:
	case !sp.Up:
		sp.Weight = 0
	case sc.SlowStart > 0 && sp.Known:
		since, ok := rampStart(sc, sp.Health, w)
		at := now
		if at.Before(sp.Health.Since) {
			at = sp.Health.Since // a check started during this pass
		}
		if elapsed := at.Sub(since); ok && elapsed < sc.SlowStart {
			step := min(time.Second, sc.SlowStart/5)
			if next := now.Add(step); p.NextChange.IsZero() || next.Before(p.NextChange) {
				p.NextChange = next
			}
			sp.Weight = max(1, uint32(uint64(w)*uint64(elapsed)/uint64(sc.SlowStart)))
		}
	}
	return sp
}

// rampStart is when a server's slow start began: its transition up; or,
// before any transition (merlin restarted mid-ramp), as long before the
// check started as the weight the kernel has implies, so the ramp goes on
// from that weight instead of jumping.
func rampStart(sc ServerCheck, st health.State, w uint32) (time.Time, bool) {
	switch {
	case st.Transitioned:
		return st.Since, true
	case sc.KernelWeight > 0 && sc.KernelWeight < w:
		done := (uint64(sc.SlowStart)*uint64(sc.KernelWeight) + uint64(w) - 1) / uint64(w)
		return st.Since.Add(-time.Duration(done)), true
	}
	return time.Time{}, false
}

// Key is the kernel key of the planned service (valid when Err is nil).
func (p *ServicePlan) Key() ipvs.ServiceKey { return p.Virtual.Service.Key }

// Healthy: the service can take traffic on this node (no checks, or at
// least one server up).
func (p *ServicePlan) Healthy() bool {
	return p.Err == nil && !p.AllDown && len(p.Virtual.Destinations) > 0
}

// VIP is the address of an address-based service (false for a firewall
// mark, or for no plan): the VIP whose state the plan is part of.
func (p *ServicePlan) VIP() (netip.Addr, bool) {
	if p == nil {
		return netip.Addr{}, false
	}
	k := p.State.Service.GetKey()
	if k.GetFwmark() != 0 {
		return netip.Addr{}, false
	}
	addr, err := netip.ParseAddr(k.GetIp())
	return addr, err == nil
}

package node

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
)

// pathProbeSink keeps, for every server checked through the VIP, a
// private IPVS firewall-mark service (the check's mark) with that server
// alone, forwarded as the service forwards to it: the probe, marked, takes
// the client traffic's path to that one server. It owns the kernel's
// firewall-mark services in the path-mark range that no desired service
// claims, and nothing else. Each costs the kernel one service and one
// destination (a few hundred bytes) and a connection entry per probe.
type pathProbeSink struct {
	table  IPVS
	model  map[ipvs.ServiceKey]ipvs.VirtualServer // what the kernel holds; nil: not read yet
	verify time.Time                              // when to look at the kernel's probe services again
	now    func() time.Time
	probes *probeIndex // the plan's probe services; nil: rebuild from the whole plan
}

// pathProbeVerify: how often the probe services are looked up in the
// kernel, so that one deleted behind merlin's back (ipvsadm -C) comes back.
const pathProbeVerify = 30 * time.Second

// NewPathProbeSink is the sink of the checks through the VIP.
func NewPathProbeSink(t IPVS) Sink { return &pathProbeSink{table: t, now: time.Now} }

// Due: when the probe services are to be looked up again (zero: none).
func (s *pathProbeSink) Due() time.Time {
	if len(s.model) == 0 {
		return time.Time{}
	}
	return s.verify
}

func (s *pathProbeSink) Name() string { return "path-probes" }

// Set looks only at the changed services' probes after the first plan,
// and compares the kernel with only the probe services they touch (all
// of them after a look at the kernel).
func (s *pathProbeSink) Set(ctx context.Context, p *Plan) error {
	var touched map[ipvs.ServiceKey]bool // nil: every one
	if p.Changed == nil || s.probes == nil {
		s.probes = newProbeIndex(p)
	} else {
		touched = s.probes.update(p)
	}
	if s.model == nil {
		if err := s.read(ctx, p); err != nil {
			return err
		}
		touched = nil
	} else if now := s.now(); len(s.model) > 0 && !now.Before(s.verify) {
		if err := s.lookUp(ctx); err != nil {
			return err
		}
		touched = nil
	}
	s.verify = s.now().Add(pathProbeVerify)
	if err := s.apply(ctx, touched); err != nil {
		return err
	}
	if collided := s.probes.collided(); len(collided) > 0 {
		return fmt.Errorf("checks through the VIP of %s share a mark: failed safe (no server answers them); change one server's port or ID", strings.Join(collided, ", "))
	}
	return nil
}

// apply makes the kernel's probe services (those in touched; nil: all)
// what the plan wants.
func (s *pathProbeSink) apply(ctx context.Context, touched map[ipvs.ServiceKey]bool) error {
	want, have := s.probes.want, s.model
	if touched != nil {
		want, have = map[ipvs.ServiceKey]ipvs.VirtualServer{}, map[ipvs.ServiceKey]ipvs.VirtualServer{}
		for k := range touched {
			if vs, ok := s.probes.want[k]; ok {
				want[k] = vs
			}
			if vs, ok := s.model[k]; ok {
				have[k] = vs
			}
		}
	}
	if maps.EqualFunc(want, have, sameVirtual) {
		return nil
	}
	ops := ipvs.Diff(slices.Collect(maps.Values(want)), slices.Collect(maps.Values(have)))
	if err := s.table.Apply(ctx, ops); err != nil {
		s.model = nil // read again before the next try
		return fmt.Errorf("checks through the VIP: %w", err)
	}
	for k := range have {
		delete(s.model, k)
	}
	maps.Copy(s.model, want)
	return nil
}

// read takes the probe services the kernel holds: marks in the range that
// no desired service claims.
func (s *pathProbeSink) read(ctx context.Context, p *Plan) error {
	table, err := s.table.Table(ctx)
	if err != nil {
		return fmt.Errorf("checks through the VIP: read IPVS: %w", err)
	}
	claimed := map[ipvs.ServiceKey]bool{}
	for _, sp := range p.Services {
		if sp.Err == nil {
			claimed[sp.Key()] = true
		}
	}
	s.model = map[ipvs.ServiceKey]ipvs.VirtualServer{}
	for _, vs := range table {
		if k := vs.Service.Key.Canonical(); IsPathMark(k.FWMark) && !claimed[k] {
			s.model[k] = vs
		}
	}
	return nil
}

// lookUp replaces the model's services with what the kernel holds of them.
func (s *pathProbeSink) lookUp(ctx context.Context) error {
	for k := range s.model {
		vs, err := s.table.Lookup(ctx, k)
		switch {
		case err != nil:
			return fmt.Errorf("checks through the VIP: look up %s: %w", k, err)
		case vs == nil:
			delete(s.model, k)
		default:
			s.model[k] = *vs
		}
	}
	return nil
}

// probe is one probe service a server checked through the VIP needs.
type probe struct {
	key  ipvs.ServiceKey
	vs   ipvs.VirtualServer
	name string // service/server
}

// probeIndex is the plan's probe services, kept as services change: a
// mark two servers share gets a service with no server (their probes
// fail).
type probeIndex struct {
	byService map[string][]probe
	owners    map[ipvs.ServiceKey][]probe // sorted by name
	want      map[ipvs.ServiceKey]ipvs.VirtualServer
}

func newProbeIndex(p *Plan) *probeIndex {
	x := &probeIndex{byService: map[string][]probe{}, owners: map[ipvs.ServiceKey][]probe{}, want: map[ipvs.ServiceKey]ipvs.VirtualServer{}}
	for id, sp := range p.Services {
		x.set(id, sp, nil)
	}
	return x
}

// update takes the changed services' probes; it returns the keys touched.
func (x *probeIndex) update(p *Plan) map[ipvs.ServiceKey]bool {
	touched := map[ipvs.ServiceKey]bool{}
	for id := range p.Changed {
		x.set(id, p.Services[id], touched)
	}
	return touched
}

// set replaces service id's probes by those of sp (nil: none).
func (x *probeIndex) set(id string, sp *ServicePlan, touched map[ipvs.ServiceKey]bool) {
	for _, pr := range x.byService[id] {
		x.owners[pr.key] = slices.DeleteFunc(x.owners[pr.key], func(o probe) bool { return o.name == pr.name })
		x.settle(pr.key, touched)
	}
	delete(x.byService, id)
	probes := probesOf(id, sp)
	if len(probes) > 0 {
		x.byService[id] = probes
	}
	for _, pr := range probes {
		i, _ := slices.BinarySearchFunc(x.owners[pr.key], pr.name, func(o probe, name string) int { return strings.Compare(o.name, name) })
		x.owners[pr.key] = slices.Insert(x.owners[pr.key], i, pr)
		x.settle(pr.key, touched)
	}
}

// settle derives what key's owners want of it.
func (x *probeIndex) settle(key ipvs.ServiceKey, touched map[ipvs.ServiceKey]bool) {
	if touched != nil {
		touched[key] = true
	}
	switch owners := x.owners[key]; len(owners) {
	case 0:
		delete(x.owners, key)
		delete(x.want, key)
	case 1:
		x.want[key] = owners[0].vs
	default:
		vs := owners[0].vs
		vs.Destinations = nil
		x.want[key] = vs
	}
}

// collided names the servers whose marks meet another's.
func (x *probeIndex) collided() []string {
	var out []string
	for _, owners := range x.owners {
		if len(owners) > 1 {
			for _, o := range owners {
				out = append(out, o.name)
			}
		}
	}
	slices.Sort(out)
	return out
}

// probesOf are the probe services service id's checks through the VIP need.
func probesOf(id string, sp *ServicePlan) []probe {
	if sp == nil || sp.Err != nil {
		return nil
	}
	var out []probe
	for server, sc := range sp.Checks.Servers {
		c := sc.Check
		srv := sp.State.Servers[server]
		if c.Mark == 0 || srv == nil {
			continue
		}
		family := ipvs.IPv4
		if c.Target.Addr().Is6() {
			family = ipvs.IPv6
		}
		key := ipvs.ServiceKey{Family: family, FWMark: c.Mark}.Canonical()
		vs := ipvs.VirtualServer{Service: ipvs.Service{Key: key, Config: ipvs.ServiceConfig{Scheduler: "rr"}}}
		if d, err := destinationOf(srv, sp.State.Service); err == nil {
			d.Config.Weight, d.Config.UpperThreshold, d.Config.LowerThreshold = 1, 0, 0
			vs.Destinations = []ipvs.Destination{d}
		}
		out = append(out, probe{key: key, vs: vs, name: id + "/" + server})
	}
	return out
}

// pathProbes are the probe services the whole plan's checks need, and the
// servers whose marks collide.
func pathProbes(p *Plan) (map[ipvs.ServiceKey]ipvs.VirtualServer, []string) {
	x := newProbeIndex(p)
	return x.want, x.collided()
}

func sameVirtual(a, b ipvs.VirtualServer) bool {
	return a.Service.Key.Canonical() == b.Service.Key.Canonical() && a.Service.Config.Scheduler == b.Service.Config.Scheduler &&
		slices.EqualFunc(a.Destinations, b.Destinations, func(x, y ipvs.Destination) bool { return x.Key == y.Key && x.Config == y.Config })
}

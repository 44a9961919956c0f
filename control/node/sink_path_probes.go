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

func (s *pathProbeSink) Set(ctx context.Context, p *Plan) error {
	want, collided := pathProbes(p)
	if s.model == nil {
		if err := s.read(ctx, p); err != nil {
			return err
		}
	} else if now := s.now(); len(s.model) > 0 && !now.Before(s.verify) {
		if err := s.lookUp(ctx); err != nil {
			return err
		}
	}
	s.verify = s.now().Add(pathProbeVerify)
	if !maps.EqualFunc(want, s.model, sameVirtual) {
		ops := ipvs.Diff(slices.Collect(maps.Values(want)), slices.Collect(maps.Values(s.model)))
		if err := s.table.Apply(ctx, ops); err != nil {
			s.model = nil // read again before the next try
			return fmt.Errorf("checks through the VIP: %w", err)
		}
		s.model = want
	}
	if len(collided) > 0 {
		return fmt.Errorf("checks through the VIP of %s share a mark: failed safe (no server answers them); change one server's port or ID", strings.Join(collided, ", "))
	}
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

// pathProbes are the probe services the plan's checks need; a mark two
// servers share gets a service with no server (their probes fail).
func pathProbes(p *Plan) (map[ipvs.ServiceKey]ipvs.VirtualServer, []string) {
	want := map[ipvs.ServiceKey]ipvs.VirtualServer{}
	owner := map[ipvs.ServiceKey]string{}
	var collided []string
	for id, sp := range p.Services { // every Set: no sorting (a shared mark fails both, in any order)
		if sp.Err != nil {
			continue
		}
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
			name := id + "/" + server
			if prev, taken := owner[key]; taken {
				collided = append(collided, prev, name)
				vs.Destinations = nil
			}
			owner[key], want[key] = name, vs
		}
	}
	return want, collided
}

func sameVirtual(a, b ipvs.VirtualServer) bool {
	return a.Service.Key.Canonical() == b.Service.Key.Canonical() && a.Service.Config.Scheduler == b.Service.Config.Scheduler &&
		slices.EqualFunc(a.Destinations, b.Destinations, func(x, y ipvs.Destination) bool { return x.Key == y.Key && x.Config == y.Config })
}

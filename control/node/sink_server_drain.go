package node

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// DestinationReader reads one kernel service's destinations with their
// connection counts (ipvs.Client).
type DestinationReader interface {
	Destinations(ctx context.Context, key ipvs.ServiceKey) ([]ipvs.DestinationStatus, error)
}

// drainTarget is one server being drained, as this node's kernel knows it.
type drainTarget struct {
	serviceID, server string
	revision          int64
	service           ipvs.ServiceKey
	dest              netip.AddrPort
	known             bool // the service is planned on this node
}

// serverDrainSink reports, for each real server being drained, how many
// connections this node's kernel still has to it. It programs nothing.
type serverDrainSink struct {
	reader  DestinationReader
	mu      sync.Mutex
	targets []drainTarget
	last    map[string]store.ServerDrain
	changed chan struct{}
}

// NewServerDrainSink is the sink that counts drained servers' connections
// into node status (the drain completes when every node counts none).
func NewServerDrainSink(r DestinationReader) Sink {
	return &serverDrainSink{reader: r, changed: make(chan struct{}, 1)}
}

func (s *serverDrainSink) Name() string { return "server-drains" }

func (s *serverDrainSink) Set(_ context.Context, p *Plan) error {
	if maps.Equal(p.ServerDrains, s.last) && !s.plannedChanged(p) {
		return nil
	}
	var targets []drainTarget
	for _, id := range slices.Sorted(maps.Keys(p.ServerDrains)) {
		d := p.ServerDrains[id]
		if d.Done() {
			continue
		}
		serviceID, server, _ := strings.Cut(id, "/")
		t := drainTarget{serviceID: serviceID, server: server, revision: d.Revision}
		t.dest, _ = netip.ParseAddrPort(server)
		if sp := p.Services[serviceID]; sp != nil && sp.Err == nil {
			t.service, t.known = sp.Virtual.Service.Key, true
		}
		targets = append(targets, t)
	}
	s.mu.Lock()
	s.targets, s.last = targets, p.ServerDrains
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return nil
}

// plannedChanged: a drained server's service came or went on this node.
func (s *serverDrainSink) plannedChanged(p *Plan) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.targets {
		sp := p.Services[t.serviceID]
		if known := sp != nil && sp.Err == nil; known != t.known || (known && sp.Virtual.Service.Key != t.service) {
			return true
		}
	}
	return false
}

// Report counts each drained server's connections in the kernel. A
// service or server the kernel does not have has none; a read that fails
// is reported as an error, which counts as no report.
func (s *serverDrainSink) Report(ctx context.Context) (func(*types.NodeStatus), error) {
	s.mu.Lock()
	targets := slices.Clone(s.targets)
	s.mu.Unlock()
	dumps := map[ipvs.ServiceKey][]ipvs.DestinationStatus{}
	out := make([]*types.ServerDrainProgress, 0, len(targets))
	for _, t := range targets {
		pr := &types.ServerDrainProgress{ServiceId: t.serviceID, Server: t.server, DrainRevision: t.revision, ReadAt: timestamppb.New(time.Now())}
		out = append(out, pr)
		if !t.known {
			continue // not programmed here: no connection
		}
		dests, ok := dumps[t.service]
		if !ok {
			var err error
			dests, err = s.reader.Destinations(ctx, t.service)
			if err != nil && !errors.Is(err, syscall.ESRCH) {
				pr.Error = model.Truncate(err.Error(), 200)
				continue
			}
			dumps[t.service] = dests
		}
		for _, d := range dests {
			if d.Key.Address.Unmap() == t.dest.Addr().Unmap() && d.Key.Port == t.dest.Port() {
				pr.Active, pr.Inactive, pr.Persistent = d.ActiveConnections, d.InactiveConnections, d.PersistentConnections
			}
		}
	}
	return func(st *types.NodeStatus) { st.ServerDrains = out }, nil
}

func (s *serverDrainSink) Changed() <-chan struct{} { return s.changed }

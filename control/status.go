package control

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// statusTTL is how long a node's status outlives the node.
const statusTTL = 15

// PublishStatus keeps the runner's status in etcd under a lease until ctx
// ends: on every change, and at least every few seconds. The status key
// disappears when the node stops renewing its lease.
func PublishStatus(ctx context.Context, store *Store, runner *Runner, apiAddress string, log *slog.Logger) {
	for ctx.Err() == nil {
		err := publishUnderLease(ctx, store, runner, apiAddress)
		if ctx.Err() != nil {
			return
		}
		log.Warn("publishing node status failed; retrying", "error", err)
		sleep(ctx, 2*time.Second)
	}
}

func publishUnderLease(ctx context.Context, store *Store, runner *Runner, apiAddress string) error {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	lease, err := store.client.Grant(lctx, statusTTL)
	cancel()
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	alive, err := store.client.KeepAlive(kctx, lease.ID)
	if err != nil {
		return fmt.Errorf("keep lease alive: %w", err)
	}
	var last *types.NodeStatus
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		st, changed := runner.Status()
		st.ApiAddress = apiAddress
		if last == nil || !proto.Equal(st, last) {
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			err := store.PutNodeStatus(pctx, lease.ID, st)
			pcancel()
			if err != nil {
				return err
			}
			last = st
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-alive:
			if !ok {
				return fmt.Errorf("lease %x expired", lease.ID)
			}
		case <-changed:
			// Coalesce bursts of changes into one write.
			sleep(ctx, 100*time.Millisecond)
		case <-tick.C:
		}
	}
}

// Status answers with every live node's status.
func (s *Server) Status(ctx context.Context, _ *emptypb.Empty) (*types.StatusResponse, error) {
	nodes, err := s.store.NodeStatuses(ctx)
	if err != nil {
		return nil, err
	}
	rev, err := s.store.DesiredRevision(ctx)
	if err != nil {
		return nil, err
	}
	return &types.StatusResponse{Nodes: nodes, DesiredRevision: rev}, nil
}

// ConfirmDeletions records the confirmation for the nodes.
// Only the revision a node actually holds back is accepted: a later one
// would approve mass deletions no one has seen yet.
func (s *Server) ConfirmDeletions(ctx context.Context, req *types.ConfirmDeletionsRequest) (*emptypb.Empty, error) {
	rev := req.GetRevision()
	if rev <= 0 {
		return nil, model.FieldErrorf("revision", "%d: want the revision meradm status shows as held", rev)
	}
	nodes, err := s.store.NodeStatuses(ctx)
	if err != nil {
		return nil, err
	}
	var held []string
	match := false
	for _, n := range nodes {
		if g := n.GetDeletionGuard(); g.GetHeld() {
			held = append(held, fmt.Sprintf("%s at %d", n.Node, g.Revision))
			match = match || g.Revision == rev
		}
	}
	switch {
	case len(held) == 0:
		return nil, status.Error(codes.FailedPrecondition, "no node holds deletions back: nothing to confirm")
	case !match:
		return nil, status.Errorf(codes.FailedPrecondition, "no node holds deletions back at revision %d (held: %s)", rev, strings.Join(held, ", "))
	}
	if err := s.store.ConfirmDeletions(ctx, rev); err != nil {
		return nil, err
	}
	s.log.Warn("mass deletion confirmed", "revision", req.GetRevision())
	return empty, nil
}

// KernelStats reads this node's IPVS counters, naming services by the
// desired state's IDs.
type KernelStats struct {
	Node   string
	Client *ipvs.Client
	Runner *Runner
}

// Stats implements the Stats RPC's source.
func (k *KernelStats) Stats(ctx context.Context) (*types.StatsResponse, error) {
	ids := map[ipvs.ServiceKey]string{}
	if st := k.Runner.Desired(); st != nil {
		for id, ss := range st.Services {
			ids[ServiceKeyOf(ss.Service)] = id
		}
	}
	svcs, err := k.Client.Services(ctx)
	if err != nil {
		return nil, fmt.Errorf("read IPVS services: %w", err)
	}
	resp := &types.StatsResponse{Node: k.Node}
	for _, s := range svcs {
		key := s.Key.Canonical()
		id, ok := ids[key]
		if !ok {
			continue // not merlin's
		}
		ss := &types.ServiceStats{ServiceId: id, Key: apiKey(key), Counters: counters(s.Stats)}
		dests, err := k.Client.Destinations(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("read destinations of %s: %w", key, err)
		}
		for _, d := range dests {
			ss.Servers = append(ss.Servers, &types.ServerStats{
				Key:                 &types.RealServer_Key{Ip: d.Key.Address.String(), Port: uint32(d.Key.Port)},
				Counters:            counters(d.Stats),
				ActiveConnections:   d.ActiveConnections,
				InactiveConnections: d.InactiveConnections,
				Weight:              d.Config.Weight,
			})
		}
		resp.Services = append(resp.Services, ss)
	}
	return resp, nil
}

func counters(s ipvs.Stats) *types.Counters {
	return &types.Counters{Connections: s.Connections, InPackets: s.InPackets, OutPackets: s.OutPackets, InBytes: s.InBytes, OutBytes: s.OutBytes,
		Cps: s.CPS, InPps: s.InPPS, OutPps: s.OutPPS, InBps: s.InBPS, OutBps: s.OutBPS}
}

func apiKey(k ipvs.ServiceKey) *types.VirtualService_Key {
	fam := types.AddressFamily_IPV4
	if k.Family == ipvs.IPv6 {
		fam = types.AddressFamily_IPV6
	}
	if k.FWMark != 0 {
		return &types.VirtualService_Key{Fwmark: k.FWMark, Family: fam}
	}
	proto := map[ipvs.Protocol]types.Protocol{ipvs.TCP: types.Protocol_TCP, ipvs.UDP: types.Protocol_UDP, ipvs.SCTP: types.Protocol_SCTP}[k.Protocol]
	return &types.VirtualService_Key{Ip: k.Address.String(), Port: uint32(k.Port), Protocol: proto, Family: fam}
}

// StatsSource gives the counters of the node serving the API.
type StatsSource interface {
	Stats(ctx context.Context) (*types.StatsResponse, error)
}

// Stats answers with this node's kernel counters.
func (s *Server) Stats(ctx context.Context, _ *emptypb.Empty) (*types.StatsResponse, error) {
	if s.stats == nil {
		return nil, fmt.Errorf("this merlin does not reconcile IPVS (-reconcile=false): %w", ErrNotFound)
	}
	return s.stats.Stats(ctx)
}

// SetStats sets where Stats reads counters from.
func (s *Server) SetStats(src StatsSource) { s.stats = src }

// DrainNode starts or ends a node's BGP drain.
func (s *Server) DrainNode(ctx context.Context, req *types.DrainNodeRequest) (*emptypb.Empty, error) {
	node := req.GetNode()
	if err := model.ValidateID("node", node); err != nil {
		return nil, err
	}
	after := DefaultDrainWithdrawAfter
	if w := req.GetWithdrawAfter(); w != nil {
		after = w.AsDuration()
		if err := w.CheckValid(); err != nil || after < 0 || after > MaxDrainWithdrawAfter {
			return nil, model.FieldErrorf("withdraw_after", "%s: want 0 to %s", after, MaxDrainWithdrawAfter)
		}
	}
	nodes, err := s.store.NodeStatuses(ctx)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(nodes, func(n *types.NodeStatus) bool { return n.Node == node }) {
		return nil, status.Errorf(codes.NotFound, "node %q: not in node status (is it running?)", model.Truncate(node, 63))
	}
	if req.GetUndrain() {
		if err := s.store.SetDrain(ctx, node, nil); err != nil {
			return nil, err
		}
		s.log.Warn("node undrained", "node", node)
		return empty, nil
	}
	if err := s.store.SetDrain(ctx, node, &Drain{Since: time.Now().UTC(), WithdrawAfter: after}); err != nil {
		return nil, err
	}
	s.log.Warn("node draining", "node", node, "withdraw_after", after)
	return empty, nil
}

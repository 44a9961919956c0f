package api

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

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
	invalid, dups, err := s.store.Findings(ctx)
	if err != nil {
		return nil, err
	}
	drains, err := s.store.ServerDrains(ctx)
	if err != nil {
		return nil, err
	}
	return &types.StatusResponse{Nodes: nodes, DesiredRevision: rev, InvalidKeys: invalid, DuplicateVips: dups,
		ServerDrains: serverDrainStatuses(drains, nodes)}, nil
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

// StatsSource gives the counters of the node serving the API.
type StatsSource interface {
	Stats(ctx context.Context) (*types.StatsResponse, error)
}

// Stats answers with this node's kernel counters.
func (s *Server) Stats(ctx context.Context, _ *emptypb.Empty) (*types.StatsResponse, error) {
	if s.stats == nil {
		return nil, fmt.Errorf("this merlin does not reconcile IPVS (-reconcile=false): %w", store.ErrNotFound)
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
	after := store.DefaultDrainWithdrawAfter
	if w := req.GetWithdrawAfter(); w != nil {
		after = w.AsDuration()
		if err := w.CheckValid(); err != nil || after < 0 || after > store.MaxDrainWithdrawAfter {
			return nil, model.FieldErrorf("withdraw_after", "%s: want 0 to %s", after, store.MaxDrainWithdrawAfter)
		}
	}
	var ramp time.Duration
	if r := req.GetRamp(); r != nil {
		ramp = r.AsDuration()
		if err := r.CheckValid(); err != nil || ramp < 0 || ramp > store.MaxDrainRamp {
			return nil, model.FieldErrorf("ramp", "%s: want 0 to %s", ramp, store.MaxDrainRamp)
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
	if err := s.store.SetDrain(ctx, node, &store.Drain{Since: time.Now().UTC(), WithdrawAfter: after, Ramp: ramp}); err != nil {
		return nil, err
	}
	s.log.Warn("node draining", "node", node, "ramp", ramp, "withdraw_after", after)
	return empty, nil
}

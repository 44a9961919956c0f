package api

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// DrainServer starts or cancels a real server's drain.
func (s *Server) DrainServer(ctx context.Context, req *types.DrainServerRequest) (*emptypb.Empty, error) {
	if err := model.ValidateID("service_id", req.GetServiceId()); err != nil {
		return nil, err
	}
	key := req.GetServer()
	if err := model.ValidateServerKey(key); err != nil {
		var fe *model.FieldError
		if errors.As(err, &fe) {
			return nil, &model.FieldError{Field: "server" + strings.TrimPrefix(fe.Field, "key"), Reason: fe.Reason}
		}
		return nil, err
	}
	var deadline time.Duration
	if d := req.GetDeadline(); d != nil {
		deadline = d.AsDuration()
		if err := d.CheckValid(); err != nil || deadline < 0 || deadline > store.MaxServerDrainDeadline {
			return nil, model.FieldErrorf("deadline", "%s: want 0 (none) to %s", deadline, store.MaxServerDrainDeadline)
		}
	}
	name := req.GetServiceId() + " " + model.ServerKeyString(key)
	if req.GetCancel() {
		rev, err := s.store.CancelServerDrain(ctx, req.GetServiceId(), key)
		if err != nil {
			return nil, err
		}
		s.log.Warn("server drain cancelled", "server", name, "revision", rev)
		return empty, nil
	}
	rev, err := s.store.StartServerDrain(ctx, req.GetServiceId(), key, deadline, req.GetThenDelete())
	if err != nil {
		return nil, err
	}
	s.log.Warn("server draining", "server", name, "deadline", deadline, "then_delete", req.GetThenDelete(), "revision", rev)
	return empty, nil
}

// serverDrainStatuses joins the drains with every node's report of them.
func serverDrainStatuses(drains map[string]store.ServerDrain, nodes []*types.NodeStatus) []*types.ServerDrainStatus {
	var out []*types.ServerDrainStatus
	for _, id := range slices.Sorted(maps.Keys(drains)) {
		d := drains[id]
		serviceID, server, _ := strings.Cut(id, "/")
		st := &types.ServerDrainStatus{ServiceId: serviceID, Server: server, Since: timestamppb.New(d.Since), ThenDelete: d.ThenDelete,
			PreviousWeight: d.PreviousWeight, State: "draining", Revision: d.Revision}
		if !d.Deadline.IsZero() {
			st.Deadline = timestamppb.New(d.Deadline)
		}
		if d.Done() {
			st.State, st.CompletedAt = d.Outcome, timestamppb.New(d.CompletedAt)
		}
		for _, n := range nodes {
			sn := &types.ServerDrainNode{Node: n.Node}
			if p := nodeProgress(n, serviceID, server, d.Revision); p != nil {
				sn.Reported, sn.Active, sn.Inactive, sn.Error = p.Error == "", p.Active, p.Inactive, p.Error
			}
			st.Nodes = append(st.Nodes, sn)
		}
		out = append(out, st)
	}
	return out
}

// nodeProgress is a node's report of one drain (nil: none for it).
func nodeProgress(n *types.NodeStatus, serviceID, server string, revision int64) *types.ServerDrainProgress {
	for _, p := range n.GetServerDrains() {
		if p.ServiceId == serviceID && p.Server == server && p.DrainRevision == revision {
			return p
		}
	}
	return nil
}

// drainVerdict says what to do with a drain now: "" (nothing yet),
// store.DrainComplete, store.DrainDeadline, or "drop" (its server is gone
// or has a weight again: the drain no longer applies).
func drainVerdict(d store.ServerDrain, st *types.ServerDrainStatus, weight uint32, found bool, now time.Time) string {
	switch {
	case !found || weight > 0:
		return "drop"
	case d.Done():
		return ""
	case !d.Deadline.IsZero() && !now.Before(d.Deadline):
		return store.DrainDeadline
	case len(st.Nodes) == 0:
		return "" // no node has said anything
	}
	for _, n := range st.Nodes {
		if !n.Reported || n.Active+n.Inactive > 0 {
			return ""
		}
	}
	return store.DrainComplete
}

// RunDrainFinisher ends server drains that are over, every period until
// ctx ends: every merlin runs one; a transaction on the drain's revision
// lets one of them act.
func (s *Server) RunDrainFinisher(ctx context.Context, period time.Duration) error {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := s.finishDrains(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.log.Warn("server drains", "error", err)
		}
	}
}

func (s *Server) finishDrains(ctx context.Context, now time.Time) error {
	drains, err := s.store.ServerDrains(ctx)
	if err != nil || len(drains) == 0 {
		return err
	}
	nodes, err := s.store.NodeStatuses(ctx)
	if err != nil {
		return err
	}
	for _, st := range serverDrainStatuses(drains, nodes) {
		id := store.ServerDrainID(st.ServiceId, st.Server)
		d := drains[id]
		weight, found, err := s.store.ServerWeight(ctx, id)
		if err != nil {
			return err
		}
		if err := s.act(ctx, id, d, drainVerdict(d, st, weight, found, now), now); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) act(ctx context.Context, id string, d store.ServerDrain, verdict string, now time.Time) error {
	var did bool
	var err error
	switch verdict {
	case "":
		return nil
	case "drop":
		did, err = s.store.DropServerDrain(ctx, id, d.Revision)
	default:
		did, err = s.store.FinishServerDrain(ctx, id, d, verdict, now)
	}
	if err != nil {
		return fmt.Errorf("drain %s: %w", id, err)
	}
	if did {
		s.log.Warn("server drain over", "server", id, "outcome", verdict, "deleted", d.ThenDelete && verdict != "drop", "after", now.Sub(d.Since).Round(time.Second))
	}
	return nil
}

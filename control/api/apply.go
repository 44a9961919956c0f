package api

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// ApplyChanges makes a batch of changes in one etcd transaction.
func (s *Server) ApplyChanges(ctx context.Context, req *types.ApplyChangesRequest) (*types.ApplyChangesResponse, error) {
	changes := req.GetChanges()
	switch {
	case len(changes) == 0:
		return nil, model.FieldErrorf("changes", "required")
	case len(changes) > store.MaxBatchChanges:
		return nil, model.FieldErrorf("changes", "%d changes: at most %d in one call", len(changes), store.MaxBatchChanges)
	}
	adds := false
	for i, ch := range changes {
		changes[i] = unmeantChange(ctx, ch)
		switch ch.GetChange().(type) {
		case *types.Change_CreateService, *types.Change_UpdateService, *types.Change_CreateServer, *types.Change_UpdateServer:
			adds = true
		}
	}
	if why := s.store.OverQuota(); adds && why != "" {
		return nil, status.Error(codes.ResourceExhausted, why)
	}
	rev, err := s.store.ApplyBatch(ctx, changes)
	if err != nil {
		return nil, err
	}
	s.log.Info("applied changes", "changes", len(changes), "revision", rev)
	return &types.ApplyChangesResponse{Revision: rev}, nil
}

// unmeantChange drops the revisions an original client did not mean (see
// unmeant).
func unmeantChange(ctx context.Context, ch *types.Change) *types.Change {
	switch c := ch.GetChange().(type) {
	case *types.Change_UpdateService:
		return &types.Change{Change: &types.Change_UpdateService{UpdateService: unmeant(ctx, c.UpdateService)}}
	case *types.Change_DeleteService:
		if !types.RevisionsMeant(ctx) && c.DeleteService.GetRevision() != 0 {
			return &types.Change{Change: &types.Change_DeleteService{DeleteService: &types.DeleteServiceRequest{Id: c.DeleteService.GetId()}}}
		}
	case *types.Change_UpdateServer:
		return &types.Change{Change: &types.Change_UpdateServer{UpdateServer: unmeant(ctx, c.UpdateServer)}}
	case *types.Change_DeleteServer:
		return &types.Change{Change: &types.Change_DeleteServer{DeleteServer: unmeant(ctx, c.DeleteServer)}}
	}
	return ch
}

package store

import (
	"context"

	"github.com/merlin-ipvs/merlin/types"
)

// The single calls: each is a batch of one change (store_batch.go), so
// the VIP index, revision, merge and delete rules are written once.

// CreateService stores a new service and claims its VIP, atomically. It
// returns the revision of the write.
func (s *Store) CreateService(ctx context.Context, in *types.VirtualService) (int64, error) {
	return s.applyOne(ctx, &types.Change{Change: &types.Change_CreateService{CreateService: in}})
}

// UpdateService changes a service. With update.Revision set, the update is
// the whole service and applies only at that revision (ErrConflict
// otherwise); without, the fields it sets are merged into the stored
// service (the original Merlin's semantics); a key given moves the service
// and its VIP claim. Every server of the service must stay valid under the
// new service.
func (s *Store) UpdateService(ctx context.Context, update *types.VirtualService) (int64, error) {
	return s.applyOne(ctx, &types.Change{Change: &types.Change_UpdateService{UpdateService: update}})
}

// DeleteService deletes a service, its VIP claim and all its servers in
// one transaction of a few operations whatever its size; with revision != 0
// only if the service is at it.
func (s *Store) DeleteService(ctx context.Context, id string, revision int64) (int64, error) {
	return s.applyOne(ctx, &types.Change{Change: &types.Change_DeleteService{DeleteService: &types.DeleteServiceRequest{Id: id, Revision: revision}}})
}

// CreateServer adds a server to an existing service.
func (s *Store) CreateServer(ctx context.Context, in *types.RealServer) (int64, error) {
	return s.applyOne(ctx, &types.Change{Change: &types.Change_CreateServer{CreateServer: in}})
}

// UpdateServer changes a server: with update.Revision, the whole server at
// that revision; without, the fields it sets are merged (see
// model.MergePresent: a wrapper or duration sent replaces the stored value
// even when zero).
func (s *Store) UpdateServer(ctx context.Context, update *types.RealServer) (int64, error) {
	return s.applyOne(ctx, &types.Change{Change: &types.Change_UpdateServer{UpdateServer: update}})
}

// DeleteServer deletes one server; with server.Revision only at it.
func (s *Store) DeleteServer(ctx context.Context, server *types.RealServer) (int64, error) {
	return s.applyOne(ctx, &types.Change{Change: &types.Change_DeleteServer{DeleteServer: server}})
}

package api

import (
	"context"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// The cluster's BGP configuration. Passwords go in and never come out:
// every read strips them, and the audit log quotes a request with its
// password replaced (types.PutBGPPeerRequest.Redacted).

// ListBGP returns the settings and every peer, without passwords.
func (s *Server) ListBGP(ctx context.Context, _ *emptypb.Empty) (*types.BGPConfig, error) {
	c, rev, err := s.store.ListBGP(ctx)
	if err != nil {
		return nil, err
	}
	out := &types.BGPConfig{Settings: c.Settings, Revision: rev}
	for _, p := range c.SortedPeers() {
		out.Peers = append(out.Peers, p.WithoutPassword())
	}
	return out, nil
}

// PutBGPPeer creates or replaces a peer.
func (s *Server) PutBGPPeer(ctx context.Context, req *types.PutBGPPeerRequest) (*emptypb.Empty, error) {
	if req.GetPeer() == nil {
		return nil, model.FieldErrorf("peer", "required")
	}
	if err := model.CheckSizes(req); err != nil {
		return nil, err
	}
	if _, err := s.store.PutBGPPeer(ctx, req.GetPeer(), req.GetCreate(), req.GetKeepPassword()); err != nil {
		return nil, err
	}
	return empty, nil
}

// DeleteBGPPeer removes a peer.
func (s *Server) DeleteBGPPeer(ctx context.Context, req *types.DeleteBGPPeerRequest) (*emptypb.Empty, error) {
	if err := model.ValidateID("name", req.GetName()); err != nil {
		return nil, err
	}
	if _, err := s.store.DeleteBGPPeer(ctx, req.GetName(), req.GetRevision()); err != nil {
		return nil, err
	}
	return empty, nil
}

// SetBGPSettings replaces the cluster's BGP settings.
func (s *Server) SetBGPSettings(ctx context.Context, req *types.BGPSettings) (*emptypb.Empty, error) {
	if err := model.CheckSizes(req); err != nil {
		return nil, err
	}
	if _, err := s.store.SetBGPSettings(ctx, req); err != nil {
		return nil, err
	}
	return empty, nil
}

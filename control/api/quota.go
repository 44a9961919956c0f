package api

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// adds are the methods that add data to etcd; deletes and drains stay
// possible however full it is.
var adds = map[string]bool{
	"/types.Merlin/CreateService": true, "/types.Merlin/UpdateService": true,
	"/types.Merlin/CreateServer": true, "/types.Merlin/UpdateServer": true,
	"/types.Merlin/PutBGPPeer": true, "/types.Merlin/SetBGPSettings": true,
}

func (s *Server) quotaGuard(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if adds[info.FullMethod] {
		if why := s.store.OverQuota(); why != "" {
			return nil, status.Error(codes.ResourceExhausted, why)
		}
	}
	return handler(ctx, req)
}

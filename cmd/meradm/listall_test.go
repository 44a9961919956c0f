package main

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/merlin-ipvs/merlin/types"
)

// olderMerlin has no ListPage: meradm lists with List.
type olderMerlin struct{ types.MerlinClient }

func (olderMerlin) ListPage(context.Context, *types.ListPageRequest, ...grpc.CallOption) (*types.ListResponse, error) {
	return nil, status.Error(codes.Unimplemented, "unknown method ListPage")
}

func (olderMerlin) List(context.Context, *emptypb.Empty, ...grpc.CallOption) (*types.ListResponse, error) {
	return &types.ListResponse{Revision: 7, Items: []*types.ListResponse_Item{{Service: &types.VirtualService{Id: "web"}}}}, nil
}

func TestListAllFallsBackToList(t *testing.T) {
	got, err := listAll(context.Background(), olderMerlin{})
	if err != nil || got.Revision != 7 || len(got.Items) != 1 {
		t.Fatalf("listAll against a merlin without ListPage: %v, %v", got, err)
	}
}

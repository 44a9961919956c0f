package main

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/merlin-ipvs/merlin/types"
)

// listAll reads the whole table a page at a time (ListPage, every page at
// the first one's revision), so that a table larger than one message
// still lists; a merlin without ListPage is asked with List.
func listAll(ctx context.Context, c types.MerlinClient) (*types.ListResponse, error) {
	out := &types.ListResponse{}
	req := &types.ListPageRequest{}
	for {
		page, err := c.ListPage(ctx, req)
		if status.Code(err) == codes.Unimplemented && req.AfterId == "" {
			return c.List(ctx, emptyRequest)
		}
		if err != nil {
			return nil, err
		}
		out.Revision = page.Revision
		out.Items = append(out.Items, page.Items...)
		out.InvalidKeys = append(out.InvalidKeys, page.InvalidKeys...)
		if page.NextAfterId == "" {
			return out, nil
		}
		req = &types.ListPageRequest{AfterId: page.NextAfterId, Revision: page.Revision}
	}
}

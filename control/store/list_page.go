package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/types"
)

// Page sizes of ListPage.
const (
	DefaultPageBytes = 1 << 20
	MaxPageBytes     = 8 << 20
)

// ListPage reads the services after afterID in ID order, with their
// servers, at revision rev (0: the current one), until the page holds
// maxBytes (at least one service). Its memory is the page's, whatever the
// size of the table. A compacted revision fails with rpctypes.ErrCompacted.
func (s *Store) ListPage(ctx context.Context, afterID string, rev int64, maxBytes int) (*types.ListResponse, error) {
	out := &types.ListResponse{Revision: rev}
	from := s.servicesPrefix() + afterID + "\x00"
	if afterID == "" {
		from = s.servicesPrefix()
	}
	size := 0
	for {
		kvs, more, revision, err := s.servicePage(ctx, from, out.Revision)
		if err != nil {
			return nil, err
		}
		out.Revision = revision
		for i, kv := range kvs {
			id := strings.TrimPrefix(string(kv.Key), s.servicesPrefix())
			item, invalid, err := s.pageItem(ctx, kv, out.Revision)
			if err != nil {
				return nil, err
			}
			out.InvalidKeys = append(out.InvalidKeys, invalid...)
			if item != nil {
				out.Items = append(out.Items, item)
				size += proto.Size(item)
			}
			if size >= maxBytes {
				if more || i < len(kvs)-1 {
					out.NextAfterId = id
				}
				return out, nil
			}
		}
		if !more || len(kvs) == 0 {
			return out, nil
		}
		from = string(kvs[len(kvs)-1].Key) + "\x00"
	}
}

// servicePage reads up to a hundred service keys from key from on.
func (s *Store) servicePage(ctx context.Context, from string, rev int64) ([]keyValue, bool, int64, error) {
	opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.servicesPrefix())), clientv3.WithLimit(100)}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := s.client.Get(pctx, from, opts...)
	if err != nil {
		return nil, false, 0, fmt.Errorf("list services at revision %d: %w", rev, err)
	}
	kvs := make([]keyValue, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		kvs[i] = keyValue{Key: kv.Key, Value: kv.Value, ModRevision: kv.ModRevision}
	}
	if rev == 0 {
		rev = resp.Header.Revision
	}
	return kvs, resp.More, rev, nil
}

// pageItem decodes one service and its servers, read at rev, with the
// rules of the whole state (State: duplicates, invalid values, order).
func (s *Store) pageItem(ctx context.Context, kv keyValue, rev int64) (*types.ListResponse_Item, []*types.InvalidKey, error) {
	id := strings.TrimPrefix(string(kv.Key), s.servicesPrefix())
	srvKVs, _, err := s.rangeAll(ctx, s.serverPrefix(id), rev)
	if err != nil {
		return nil, nil, err
	}
	st := NewState(s.prefix, rev)
	st.put(string(kv.Key), kv.Value, kv.ModRevision)
	for _, skv := range srvKVs {
		st.put(string(skv.Key), skv.Value, skv.ModRevision)
	}
	resp := st.ListResponse()
	if len(resp.Items) == 0 {
		return nil, resp.InvalidKeys, nil
	}
	return resp.Items[0], resp.InvalidKeys, nil
}

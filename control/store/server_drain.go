package store

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// ServerDrain is a real server's drain as stored in etcd
// (PREFIX/server-drains/ID/IP:PORT): its weight went to 0 at Since (from
// PreviousWeight, which a cancel restores); it completes when every node
// reports no connection to it, or at Deadline, then the server is deleted
// when ThenDelete.
type ServerDrain struct {
	Since          time.Time `json:"since"`
	Deadline       time.Time `json:"deadline,omitzero"`
	ThenDelete     bool      `json:"then_delete,omitempty"`
	PreviousWeight uint32    `json:"previous_weight"`
	// CompletedAt and Outcome ("complete", "deadline") once it is over
	// (the server kept: ThenDelete was not asked).
	CompletedAt time.Time `json:"completed_at,omitzero"`
	Outcome     string    `json:"outcome,omitempty"`
	// Revision is its key's mod revision: what a node's report names.
	Revision int64 `json:"-"`
}

// Server drain outcomes.
const (
	DrainComplete = "complete"
	DrainDeadline = "deadline"
)

// MaxServerDrainDeadline bounds a drain's deadline.
const MaxServerDrainDeadline = 7 * 24 * time.Hour

// Done: the drain is over (the server kept at weight 0).
func (d ServerDrain) Done() bool { return d.Outcome != "" }

func (k keys) serverDrainsPrefix() string { return k.prefix + "/server-drains/" }

// serverDrainOf is the "ID/IP:PORT" of a server drain key.
func (k keys) serverDrainOf(key string) (string, bool) {
	return strings.CutPrefix(key, k.serverDrainsPrefix())
}

// ServerDrainID names a server drain: "ID/IP:PORT".
func ServerDrainID(serviceID, server string) string { return serviceID + "/" + server }

// setServerDrain records a server drain (nil value: none). A value that
// does not decode is listed invalid and left out: nothing is drained by it.
func (s *State) setServerDrain(id string, value []byte, modRevision int64) {
	next := maps.Clone(s.ServerDrains)
	if next == nil {
		next = map[string]ServerDrain{}
	}
	delete(next, id)
	delete(s.Invalid, s.serverDrainsPrefix()+id)
	if value != nil {
		var d ServerDrain
		if err := json.Unmarshal(value, &d); err != nil {
			s.Invalid[s.serverDrainsPrefix()+id] = fmt.Sprintf("server drain: %v", err)
		} else {
			d.Revision = modRevision
			next[id] = d
		}
	}
	s.ServerDrains = next
}

// listServerDrains reads every server drain at revision rev into st.
func (s *Store) listServerDrains(ctx context.Context, st *State, rev int64) error {
	kvs, _, err := s.rangeAll(ctx, s.serverDrainsPrefix(), rev)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		st.put(string(kv.Key), kv.Value, kv.ModRevision)
	}
	return nil
}

// StartServerDrain sets a server's weight to 0 and records the drain, in
// one transaction; ErrNotFound for an unknown server, ErrAlreadyExists
// while it drains.
func (s *Store) StartServerDrain(ctx context.Context, serviceID string, key *types.RealServer_Key, deadline time.Duration, thenDelete bool) (int64, error) {
	srv, err := s.readServer(ctx, serviceID, key)
	if err != nil {
		return 0, err
	}
	now := time.Now().UTC()
	d := ServerDrain{Since: now, ThenDelete: thenDelete, PreviousWeight: srv.GetConfig().GetWeight().GetValue()}
	if deadline > 0 {
		d.Deadline = now.Add(deadline)
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return 0, err
	}
	drained := storedServer(srv)
	drained.Config.Weight = wrapperspb.UInt32(0)
	val, err := proto.Marshal(drained)
	if err != nil {
		return 0, err
	}
	serverKey, drainKey := s.serverKey(serviceID, key), s.serverDrainsPrefix()+ServerDrainID(serviceID, model.ServerKeyString(key))
	resp, err := s.client.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(serverKey), "=", srv.Revision),
		clientv3.Compare(clientv3.CreateRevision(drainKey), "=", 0),
	).Then(clientv3.OpPut(serverKey, string(val)), clientv3.OpPut(drainKey, string(raw)), s.mark()).Else(clientv3.OpGet(drainKey)).Commit()
	switch {
	case err != nil:
		return 0, fmt.Errorf("drain server %s: %w", model.ServerName(srv), err)
	case resp.Succeeded:
		return resp.Header.Revision, nil
	case len(resp.Responses[0].GetResponseRange().Kvs) > 0:
		return 0, fmt.Errorf("server %s is already draining (cancel it first): %w", model.ServerName(srv), ErrAlreadyExists)
	}
	return 0, fmt.Errorf("drain server %s: it changed meanwhile: %w", model.ServerName(srv), ErrConflict)
}

// readServer reads one valid server.
func (s *Store) readServer(ctx context.Context, serviceID string, key *types.RealServer_Key) (*types.RealServer, error) {
	snap, err := s.readService(ctx, serviceID)
	if err != nil {
		return nil, err
	}
	want := model.ServerKeyString(key)
	for _, srv := range snap.servers {
		if model.ServerKeyString(srv.Key) == want {
			return srv, nil
		}
	}
	return nil, fmt.Errorf("server %s of service %q: %w", model.Truncate(want, 60), serviceID, ErrNotFound)
}

// CancelServerDrain ends a drain: the weight it had comes back if the
// server is still at 0 (an edit since is kept), and the record goes.
func (s *Store) CancelServerDrain(ctx context.Context, serviceID string, key *types.RealServer_Key) (int64, error) {
	id := ServerDrainID(serviceID, model.ServerKeyString(key))
	drainKey := s.serverDrainsPrefix() + id
	resp, err := s.client.Get(ctx, drainKey)
	if err != nil {
		return 0, fmt.Errorf("read drain %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, fmt.Errorf("server %s of service %q is not draining: %w", model.Truncate(model.ServerKeyString(key), 60), serviceID, ErrNotFound)
	}
	var d ServerDrain
	_ = json.Unmarshal(resp.Kvs[0].Value, &d) // a damaged record is cancelled all the same
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(drainKey), "=", resp.Kvs[0].ModRevision)}
	ops := []clientv3.Op{clientv3.OpDelete(drainKey), s.mark()}
	if srv, err := s.readServer(ctx, serviceID, key); err == nil && srv.GetConfig().GetWeight().GetValue() == 0 && d.PreviousWeight > 0 {
		restored := storedServer(srv)
		restored.Config.Weight = wrapperspb.UInt32(d.PreviousWeight)
		val, err := proto.Marshal(restored)
		if err != nil {
			return 0, err
		}
		serverKey := s.serverKey(serviceID, key)
		conds = append(conds, clientv3.Compare(clientv3.ModRevision(serverKey), "=", srv.Revision))
		ops = append(ops, clientv3.OpPut(serverKey, string(val)))
	}
	txn, err := s.client.Txn(ctx).If(conds...).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("cancel drain %s: %w", id, err)
	}
	if !txn.Succeeded {
		return 0, fmt.Errorf("cancel drain %s: it changed meanwhile: %w", id, ErrConflict)
	}
	return txn.Header.Revision, nil
}

// FinishServerDrain ends the drain d of server id ("ID/IP:PORT") with
// outcome, if it is still at d.Revision: the server is deleted when the
// drain asked for it, else the record is kept with its outcome. It
// reports whether it did (another node may have been first).
func (s *Store) FinishServerDrain(ctx context.Context, id string, d ServerDrain, outcome string, now time.Time) (bool, error) {
	drainKey := s.serverDrainsPrefix() + id
	cond := clientv3.Compare(clientv3.ModRevision(drainKey), "=", d.Revision)
	var ops []clientv3.Op
	if d.ThenDelete {
		serviceID, server, _ := strings.Cut(id, "/")
		ops = []clientv3.Op{clientv3.OpDelete(drainKey), clientv3.OpDelete(s.serverPrefix(serviceID) + server)}
	} else {
		d.Outcome, d.CompletedAt = outcome, now.UTC()
		raw, err := json.Marshal(d)
		if err != nil {
			return false, err
		}
		ops = []clientv3.Op{clientv3.OpPut(drainKey, string(raw))}
	}
	resp, err := s.client.Txn(ctx).If(cond).Then(append(ops, s.mark())...).Commit()
	if err != nil {
		return false, fmt.Errorf("finish drain %s: %w", id, err)
	}
	return resp.Succeeded, nil
}

// DropServerDrain removes a drain record at revision (its server is gone,
// or has a weight again).
func (s *Store) DropServerDrain(ctx context.Context, id string, revision int64) (bool, error) {
	drainKey := s.serverDrainsPrefix() + id
	resp, err := s.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(drainKey), "=", revision)).
		Then(clientv3.OpDelete(drainKey), s.mark()).Commit()
	if err != nil {
		return false, fmt.Errorf("drop drain %s: %w", id, err)
	}
	return resp.Succeeded, nil
}

// ServerDrains reads every server drain now, by "ID/IP:PORT" (records
// that do not decode are left out).
func (s *Store) ServerDrains(ctx context.Context) (map[string]ServerDrain, error) {
	st := NewState(s.prefix, 0)
	if err := s.listServerDrains(ctx, st, 0); err != nil {
		return nil, fmt.Errorf("list server drains: %w", err)
	}
	return st.ServerDrains, nil
}

// ServerWeight reads a drained server's weight (found false: it is gone).
func (s *Store) ServerWeight(ctx context.Context, id string) (weight uint32, found bool, err error) {
	serviceID, server, _ := strings.Cut(id, "/")
	resp, err := s.client.Get(ctx, s.serverPrefix(serviceID)+server)
	if err != nil {
		return 0, false, fmt.Errorf("read server %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, false, nil
	}
	var srv types.RealServer
	if err := proto.Unmarshal(resp.Kvs[0].Value, &srv); err != nil {
		return 0, true, fmt.Errorf("server %s: %w", id, err)
	}
	if srv.GetConfig().GetWeight() == nil {
		return 1, true, nil // the original Merlin's default
	}
	return srv.GetConfig().GetWeight().GetValue(), true, nil
}

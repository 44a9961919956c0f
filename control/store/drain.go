package store

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Drain is a node's BGP drain as stored in etcd (PREFIX/drain/NODE): since
// when, how long its link bandwidth ramps down first, and how long its
// VIPs then stay announced with GRACEFUL_SHUTDOWN before they are
// withdrawn.
type Drain struct {
	Since         time.Time     `json:"since"`
	WithdrawAfter time.Duration `json:"withdraw_after"`
	Ramp          time.Duration `json:"ramp,omitempty"`
}

// DefaultDrainWithdrawAfter is how long a drain announces with
// GRACEFUL_SHUTDOWN before withdrawing, unless the request says.
const DefaultDrainWithdrawAfter = 30 * time.Second

// MaxDrainWithdrawAfter bounds it.
const MaxDrainWithdrawAfter = time.Hour

// MaxDrainRamp bounds a drain's ramp.
const MaxDrainRamp = time.Hour

// setDrain records a node's drain (nil value: none); a value that does not
// decode counts as a drain from the epoch: withdrawn, the safe reading of a
// drain someone asked for.
func (s *State) setDrain(node string, value []byte) {
	next := maps.Clone(s.Drains)
	if next == nil {
		next = map[string]Drain{}
	}
	if value == nil {
		delete(next, node)
	} else {
		var d Drain
		if err := json.Unmarshal(value, &d); err != nil {
			s.Invalid[s.drainPrefix()+node] = fmt.Sprintf("drain: %v", err)
		}
		next[node] = d
	}
	s.Drains = next
}

// SetDrain stores a node's drain, or removes it (nil).
func (s *Store) SetDrain(ctx context.Context, node string, d *Drain) error {
	key := s.drainPrefix() + node
	if d == nil {
		if _, err := s.client.Delete(ctx, key); err != nil {
			return fmt.Errorf("undrain %s: %w", node, err)
		}
		return nil
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if _, err := s.client.Put(ctx, key, string(raw)); err != nil {
		return fmt.Errorf("drain %s: %w", node, err)
	}
	return nil
}

// listDrains reads every drain at revision rev into st.
func (s *Store) listDrains(ctx context.Context, st *State, rev int64) error {
	resp, err := s.client.Get(ctx, s.drainPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return fmt.Errorf("list %s at revision %d: %w", s.drainPrefix(), rev, err)
	}
	for _, kv := range resp.Kvs {
		st.put(string(kv.Key), kv.Value, kv.ModRevision)
	}
	return nil
}

package store

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// BGPConfig is the cluster's BGP configuration as stored: settings and
// peers by name, passwords included (the API strips them from every
// read). Immutable once built: a change builds a new one.
type BGPConfig struct {
	Settings *types.BGPSettings // never nil
	Peers    map[string]*types.BGPPeerConfig
}

// Equal compares two configurations by content (nil is the empty one).
func (c *BGPConfig) Equal(o *BGPConfig) bool {
	if c == nil || o == nil {
		return c.empty() && o.empty()
	}
	return proto.Equal(c.Settings, o.Settings) && maps.EqualFunc(c.Peers, o.Peers, func(a, b *types.BGPPeerConfig) bool { return proto.Equal(a, b) })
}

func (c *BGPConfig) empty() bool {
	return c == nil || (len(c.Peers) == 0 && proto.Equal(c.Settings, &types.BGPSettings{}))
}

// SortedPeers lists the peers by name.
func (c *BGPConfig) SortedPeers() []*types.BGPPeerConfig {
	if c == nil {
		return nil
	}
	out := make([]*types.BGPPeerConfig, 0, len(c.Peers))
	for _, name := range slices.Sorted(maps.Keys(c.Peers)) {
		out = append(out, c.Peers[name])
	}
	return out
}

// setBGP records a BGP key's value (nil: deleted). A value that does not
// decode or validate is listed in Invalid and left out: a node keeps
// peering as it did rather than with half a peer.
func (s *State) setBGP(key string, value []byte, modRevision int64) {
	next := &BGPConfig{Settings: &types.BGPSettings{}, Peers: map[string]*types.BGPPeerConfig{}}
	if s.BGP != nil {
		next.Settings, next.Peers = s.BGP.Settings, maps.Clone(s.BGP.Peers)
	}
	delete(s.Invalid, key)
	name, isPeer := strings.CutPrefix(key, s.bgpPeersPrefix())
	switch {
	case isPeer && value == nil:
		delete(next.Peers, name)
	case isPeer:
		delete(next.Peers, name)
		p := &types.BGPPeerConfig{}
		err := proto.Unmarshal(value, p)
		if err == nil {
			err = model.ValidateBGPPeer(p)
		}
		if err == nil && p.GetName() != name {
			err = fmt.Errorf("name %q is not the key's", model.Truncate(p.GetName(), 64))
		}
		if err != nil {
			s.Invalid[key] = fmt.Sprintf("bgp peer: %v", err)
			break
		}
		p.Revision = modRevision
		next.Peers[name] = p
	case key == s.bgpSettingsKey():
		st := &types.BGPSettings{}
		if value != nil {
			err := proto.Unmarshal(value, st)
			if err == nil {
				err = model.ValidateBGPSettings(st)
			}
			if err != nil {
				s.Invalid[key] = fmt.Sprintf("bgp settings: %v", err)
				return
			}
			st.Revision = modRevision
		}
		next.Settings = st
	default:
		s.Invalid[key] = "not a key merlin writes"
	}
	s.BGP = next
}

// listBGP reads the BGP configuration at revision rev into st.
func (s *Store) listBGP(ctx context.Context, st *State, rev int64) error {
	resp, err := s.client.Get(ctx, s.bgpPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return fmt.Errorf("list %s at revision %d: %w", s.bgpPrefix(), rev, err)
	}
	st.BGP = &BGPConfig{Settings: &types.BGPSettings{}, Peers: map[string]*types.BGPPeerConfig{}}
	for _, kv := range resp.Kvs {
		st.put(string(kv.Key), kv.Value, kv.ModRevision)
	}
	return nil
}

// ListBGP reads the cluster's BGP configuration now.
func (s *Store) ListBGP(ctx context.Context) (*BGPConfig, int64, error) {
	st := NewState(s.prefix, 0)
	resp, err := s.client.Get(ctx, s.bgpPrefix(), clientv3.WithPrefix(), clientv3.WithLimit(model.MaxBGPPeers+2))
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", s.bgpPrefix(), err)
	}
	st.BGP = &BGPConfig{Settings: &types.BGPSettings{}, Peers: map[string]*types.BGPPeerConfig{}}
	for _, kv := range resp.Kvs {
		st.put(string(kv.Key), kv.Value, kv.ModRevision)
	}
	return st.BGP, resp.Header.Revision, nil
}

// PutBGPPeer creates (create) or replaces a cluster peer, at p.Revision
// when set; keepPassword keeps the stored password when p has none. It
// returns the revision of the write.
func (s *Store) PutBGPPeer(ctx context.Context, p *types.BGPPeerConfig, create, keepPassword bool) (int64, error) {
	if err := model.ValidateBGPPeer(p); err != nil {
		return 0, err
	}
	key := s.bgpPeersPrefix() + p.GetName()
	p = proto.Clone(p).(*types.BGPPeerConfig)
	rev := p.GetRevision()
	p.Revision, p.PasswordSet = 0, false
	var cond []clientv3.Cmp
	if create {
		n, err := s.client.Get(ctx, s.bgpPeersPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, fmt.Errorf("count bgp peers: %w", err)
		}
		if n.Count >= model.MaxBGPPeers {
			return 0, model.FieldErrorf("name", "the cluster has %d BGP peers, the most it takes", n.Count)
		}
		cond = append(cond, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
	} else {
		old, err := s.client.Get(ctx, key)
		if err != nil {
			return 0, fmt.Errorf("read bgp peer %s: %w", p.GetName(), err)
		}
		if len(old.Kvs) == 0 {
			return 0, fmt.Errorf("bgp peer %q: %w", p.GetName(), ErrNotFound)
		}
		if rev == 0 {
			rev = old.Kvs[0].ModRevision // the password kept is the one read
		}
		if keepPassword && p.GetPassword() == "" && p.GetPasswordFile() == "" {
			prev := &types.BGPPeerConfig{}
			if err := proto.Unmarshal(old.Kvs[0].Value, prev); err == nil {
				p.Password = prev.GetPassword()
			}
		}
		cond = append(cond, clientv3.Compare(clientv3.ModRevision(key), "=", rev))
	}
	return s.putIf(ctx, key, p, cond, create, "bgp peer "+p.GetName())
}

// DeleteBGPPeer removes a cluster peer (at revision when set).
func (s *Store) DeleteBGPPeer(ctx context.Context, name string, revision int64) (int64, error) {
	key := s.bgpPeersPrefix() + name
	cond := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), ">", 0)}
	if revision != 0 {
		cond = append(cond, clientv3.Compare(clientv3.ModRevision(key), "=", revision))
	}
	resp, err := s.client.Txn(ctx).If(cond...).Then(clientv3.OpDelete(key)).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return 0, fmt.Errorf("delete bgp peer %s: %w", name, err)
	}
	if !resp.Succeeded {
		if len(resp.Responses[0].GetResponseRange().Kvs) == 0 {
			return 0, fmt.Errorf("bgp peer %q: %w", name, ErrNotFound)
		}
		return 0, fmt.Errorf("bgp peer %q: %w", name, ErrConflict)
	}
	return resp.Header.Revision, nil
}

// SetBGPSettings replaces the cluster's BGP settings (at st.Revision when set).
func (s *Store) SetBGPSettings(ctx context.Context, st *types.BGPSettings) (int64, error) {
	if err := model.ValidateBGPSettings(st); err != nil {
		return 0, err
	}
	st = proto.Clone(st).(*types.BGPSettings)
	var cond []clientv3.Cmp
	if st.Revision != 0 {
		cond = append(cond, clientv3.Compare(clientv3.ModRevision(s.bgpSettingsKey()), "=", st.Revision))
	}
	st.Revision = 0
	return s.putIf(ctx, s.bgpSettingsKey(), st, cond, false, "bgp settings")
}

// putIf writes m at key when cond holds: ErrAlreadyExists (create) or
// ErrConflict otherwise.
func (s *Store) putIf(ctx context.Context, key string, m proto.Message, cond []clientv3.Cmp, create bool, what string) (int64, error) {
	raw, err := proto.Marshal(m)
	if err != nil {
		return 0, err
	}
	resp, err := s.client.Txn(ctx).If(cond...).Then(clientv3.OpPut(key, string(raw))).Commit()
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", what, err)
	}
	if !resp.Succeeded {
		if create {
			return 0, fmt.Errorf("%s: %w", what, ErrAlreadyExists)
		}
		return 0, fmt.Errorf("%s: %w", what, ErrConflict)
	}
	return resp.Header.Revision, nil
}

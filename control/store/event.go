package store

import (
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/types"
)

// Change is what one etcd event did, as API clients see it: a service, a
// server or a node's status put or deleted. A deletion carries only the
// identity (service ID; server service ID and key; node name).
type Change struct {
	Revision int64
	Deleted  bool
	Service  *types.VirtualService
	Server   *types.RealServer
	Node     *types.NodeStatus
}

// ApplyEvent applies an etcd event to the state and says what it changed;
// false for keys that are not part of the API (the VIP index, drains) and
// for values that do not decode (List reports those).
func (s *State) ApplyEvent(ev *clientv3.Event) (Change, bool) {
	key := string(ev.Kv.Key)
	ch := Change{Revision: ev.Kv.ModRevision, Deleted: ev.Type == clientv3.EventTypeDelete}
	if name, isNode := s.nodeOf(key); isNode {
		ch.Node = &types.NodeStatus{Node: name}
		if !ch.Deleted && proto.Unmarshal(ev.Kv.Value, ch.Node) != nil {
			return ch, false
		}
		return ch, true
	}
	isService, id, ok := s.keyKind(key)
	if !ok {
		return ch, false
	}
	if ch.Deleted {
		s.delete(key)
		if isService {
			ch.Service = &types.VirtualService{Id: id}
		} else {
			ch.Server = serverIdentity(id, key)
		}
		return ch, true
	}
	s.put(key, ev.Kv.Value, ev.Kv.ModRevision)
	ss := s.Services[id]
	switch {
	case ss == nil:
		return ch, false
	case isService:
		ch.Service = ss.Service
	default:
		ch.Server = ss.Servers[lastSegment(key)]
	}
	return ch, ch.Service != nil || ch.Server != nil
}

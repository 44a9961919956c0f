package store

import (
	"context"
	"errors"
	"maps"
	"runtime"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// checkPoint is what the periodic check compares etcd with: the mod
// revision of every service and server key the watcher holds, and the
// settings it made of the rest. Values are not kept: an equal mod
// revision is the same write.
type checkPoint struct {
	revision int64
	services map[string]int64 // service ID → mod revision
	servers  map[string]int64 // etcd key → mod revision
	settings *State           // confirmed deletions, drains, server drains, BGP (shared, immutable)
}

// checkPoint copies the key revisions (the watch goes on changing s).
func (s *State) checkPoint() checkPoint {
	cp := checkPoint{revision: s.seen, services: make(map[string]int64, len(s.rawServices)),
		settings: &State{ConfirmedDeletions: s.ConfirmedDeletions, Drains: s.Drains, ServerDrains: s.ServerDrains, BGP: s.BGP}}
	n := 0
	for _, m := range s.rawServers {
		n += len(m)
	}
	cp.servers = make(map[string]int64, n)
	for id, raw := range s.rawServices {
		cp.services[id] = raw.modRevision
	}
	for _, m := range s.rawServers {
		for key, raw := range m {
			cp.servers[key] = raw.modRevision
		}
	}
	return cp
}

// errDiffers ends a listing at the first difference.
var errDiffers = errors.New("differs")

// holdsAt reports whether etcd at cp's revision holds what cp says: every
// service and server key with the same mod revision and no other key, and
// the same settings. Services and servers are read keys only, a page at a
// time: a check costs a page of memory, not a second copy of the table.
func (s *Store) holdsAt(ctx context.Context, cp checkPoint) (bool, error) {
	for _, part := range []struct {
		prefix string
		revs   map[string]int64
	}{{s.servicesPrefix(), cp.services}, {s.serversPrefix(), cp.servers}} {
		seen := 0
		_, err := s.rangePages(ctx, part.prefix, cp.revision, true, func(kvs []*mvccpb.KeyValue) error {
			for _, kv := range kvs {
				isService, id, ok := s.keyKind(string(kv.Key))
				if !ok {
					continue // not a key the state holds
				}
				key := string(kv.Key)
				if isService {
					key = id
				}
				if rev, held := part.revs[key]; !held || rev != kv.ModRevision {
					return errDiffers
				}
				seen++
			}
			runtime.Gosched() // beside the watch and the agent
			return nil
		})
		if errors.Is(err, errDiffers) || (err == nil && seen != len(part.revs)) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
	st := NewState(s.prefix, cp.revision)
	if err := s.listSettings(ctx, st, cp.revision); err != nil {
		return false, err
	}
	want := cp.settings
	return st.ConfirmedDeletions == want.ConfirmedDeletions && maps.Equal(st.Drains, want.Drains) &&
		maps.Equal(st.ServerDrains, want.ServerDrains) && st.BGP.Equal(want.BGP), nil
}

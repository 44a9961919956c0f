package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Ping asks etcd for a key count under the prefix, requiring a leader: the
// one probe of etcd's health (/readyz, merlin_etcd_connected, the gRPC
// health service).
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := s.client.Get(clientv3.WithRequireLeader(ctx), s.pingKey(), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	return nil
}

// FollowOptions tune Follow.
type FollowOptions struct {
	// ProgressInterval: after this long without any response Follow asks
	// etcd for a progress notification, and gives up (RelistSilent) if
	// none arrives within another interval. Default 10 s.
	ProgressInterval time.Duration
	// Tick, when set, makes Follow call OnTick on its own goroutine, so
	// the caller may look at what OnEvents built without a lock.
	Tick   <-chan time.Time
	OnTick func()
}

// Follow streams every change under the prefix from revision from, with
// WithRequireLeader and progress notifications, until ctx ends or the
// watch cannot go on. Each burst of responses already waiting is one call
// of onEvents with their events in order and the last header's revision.
// It returns why it stopped — RelistCompacted, RelistClosed (closed, or
// failed: etcd restarted, lost its leader), RelistSilent — or "" when ctx
// ended, and the error onEvents returned, which also stops it. A caller
// never resumes at a compacted revision: it lists again.
func (s *Store) Follow(ctx context.Context, from int64, o FollowOptions, onEvents func(events []*clientv3.Event, revision int64) error) (string, error) {
	if o.ProgressInterval == 0 {
		o.ProgressInterval = 10 * time.Second
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// The client's Watch waits until etcd has taken the watch: an etcd
	// that went away just before would hold it until it comes back.
	unanswered := time.AfterFunc(2*o.ProgressInterval, cancel)
	ch := s.client.Watch(wctx, s.all(), clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
	if !unanswered.Stop() {
		if ctx.Err() != nil {
			return "", nil
		}
		return RelistSilent, nil
	}
	silence := time.NewTimer(o.ProgressInterval)
	defer silence.Stop()
	askedProgress := false
	seen := from - 1 // the highest revision etcd has answered with
	for {
		select {
		case <-ctx.Done():
			return "", nil
		case <-o.Tick:
			o.OnTick()
		case <-silence.C:
			if askedProgress {
				return RelistSilent, nil
			}
			// Quiet is normal; a hung connection is not. Ask etcd to prove
			// the watch is alive (no answer in time is what the next
			// expiry finds).
			askedProgress = true
			pctx, pcancel := context.WithTimeout(wctx, o.ProgressInterval)
			_ = s.client.RequestProgress(pctx)
			pcancel()
			silence.Reset(o.ProgressInterval)
		case resp, ok := <-ch:
			events, revision, reason := gather(resp, ok, ch, &seen)
			if reason != "" {
				return reason, nil
			}
			askedProgress = false
			silence.Reset(o.ProgressInterval)
			if err := onEvents(events, revision); err != nil {
				return "", err
			}
		}
	}
}

// gather takes resp and every response already waiting, so that a burst
// of writes (an import) costs one call, not one each. A reason means the
// watch must be given up.
func gather(resp clientv3.WatchResponse, ok bool, ch clientv3.WatchChan, seen *int64) (events []*clientv3.Event, revision int64, reason string) {
	for {
		if reason := stopReason(resp, ok); reason != "" {
			return nil, 0, reason
		}
		if resp.Header.Revision != 0 && resp.Header.Revision < *seen {
			// etcd is behind what it said before: it was restored from a
			// snapshot, and the watch (which the client resumes after the
			// last revision it saw) would stay silent until etcd caught up.
			return nil, 0, RelistRestored
		}
		*seen = max(*seen, resp.Header.Revision)
		events = append(events, resp.Events...)
		revision = resp.Header.Revision
		select {
		case resp, ok = <-ch:
		default:
			return events, revision, ""
		}
	}
}

func stopReason(resp clientv3.WatchResponse, ok bool) string {
	switch {
	case !ok:
		return RelistClosed
	case resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted):
		return RelistCompacted
	case resp.Err() != nil:
		return RelistClosed
	}
	return ""
}

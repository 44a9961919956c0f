package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Reasons the Watcher lists the whole state again.
const (
	RelistStart     = "start"
	RelistCompacted = "compacted"
	RelistClosed    = "closed"   // the watch channel closed or failed (etcd restart, lost leader)
	RelistSilent    = "silent"   // no event nor progress notification came back in time
	RelistPeriodic  = "periodic" // the periodic check found the watch had missed something
	RelistRestored  = "restored" // etcd's revision went back (restored from a snapshot)
)

// WatcherConfig tunes a Watcher; zero values take the defaults.
type WatcherConfig struct {
	// ResyncPeriod between periodic checks: etcd is listed at the watched
	// revision beside the watch and compared; a difference (a missed
	// event) leads to a full re-list. Default 5 minutes.
	ResyncPeriod time.Duration
	// ProgressInterval: after this long without any response the watcher
	// asks etcd for a progress notification, and re-lists if none arrives
	// within another interval; default 10 s.
	ProgressInterval time.Duration
	// RetryBackoff is the first wait after a failed list; it doubles up
	// to MaxBackoff. Defaults 200 ms and 5 s.
	RetryBackoff, MaxBackoff time.Duration
}

// Watcher keeps a decoded copy of the desired state in step with etcd: it
// lists at one revision R (every page at R), watches from R+1 with
// WithRequireLeader, and lists again — never resuming at a compacted
// revision — when the watch is compacted, closed, or silent. Undecodable
// values are skipped and reported in State.Invalid, never fatal.
type Watcher struct {
	store *Store
	log   *slog.Logger
	cfg   WatcherConfig

	mu      sync.Mutex
	relists map[string]int
	invalid int
	checks  int
}

// NewWatcher watches the store's prefix.
func NewWatcher(store *Store, log *slog.Logger, cfg WatcherConfig) *Watcher {
	if cfg.ResyncPeriod == 0 {
		cfg.ResyncPeriod = 5 * time.Minute
	}
	if cfg.ProgressInterval == 0 {
		cfg.ProgressInterval = 10 * time.Second
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	return &Watcher{store: store, log: log, cfg: cfg, relists: map[string]int{}}
}

// Relists returns how often the watcher listed the whole state, by reason.
func (w *Watcher) Relists() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]int, len(w.relists))
	for k, v := range w.relists {
		out[k] = v
	}
	return out
}

// InvalidKeys is how many keys the last delivered state could not use.
func (w *Watcher) InvalidKeys() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.invalid
}

// Run delivers the whole state to onChange after every list, and what
// changed after every batch of watch events, until ctx ends. onChange owns
// the Update it gets. Run returns ctx's error.
func (w *Watcher) Run(ctx context.Context, onChange func(*Update)) error {
	reason := RelistStart
	backoff := w.cfg.RetryBackoff
	for {
		state, err := w.list(ctx, reason)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			w.log.Warn("list desired state failed; keeping the last one", "reason", reason, "error", err, "retry_in", backoff)
			if !sleep(ctx, backoff) {
				return ctx.Err()
			}
			backoff = min(2*backoff, w.cfg.MaxBackoff)
			continue
		}
		backoff = w.cfg.RetryBackoff
		w.deliver(state, true, time.Now(), onChange)
		reason = w.watch(ctx, state, onChange)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.log.Info("listing desired state again", "reason", reason, "revision", state.Revision)
	}
}

func (w *Watcher) list(ctx context.Context, reason string) (*State, error) {
	w.mu.Lock()
	w.relists[reason]++
	w.mu.Unlock()
	// Each page has its own deadline (see rangeAll): a large table takes
	// many pages, and one hung request must not hold the list forever.
	return w.store.ListState(clientv3.WithRequireLeader(ctx))
}

func (w *Watcher) deliver(state *State, full bool, received time.Time, onChange func(*Update)) {
	w.mu.Lock()
	w.invalid = len(state.Invalid)
	w.mu.Unlock()
	u := state.update(full)
	u.Received = received
	onChange(u)
}

// watch follows changes after state.Revision, updating state, until it
// needs a re-list; it returns the reason. The periodic repair lists etcd
// at the revision the watcher has seen, beside the watch, and compares;
// only a difference costs a re-list.
func (w *Watcher) watch(ctx context.Context, state *State, onChange func(*Update)) string {
	// A check still waiting for etcd ends with fctx: stop, then wait.
	var checks sync.WaitGroup
	defer checks.Wait()
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	resync := time.NewTicker(w.cfg.ResyncPeriod)
	defer resync.Stop()
	var checking, missed atomic.Bool
	check := func() {
		if checking.Swap(true) {
			return
		}
		cp := state.checkPoint()
		checks.Go(func() {
			defer checking.Store(false)
			differs := w.differs(fctx, cp)
			w.mu.Lock()
			w.checks++
			w.mu.Unlock()
			if differs {
				missed.Store(true)
				stop()
			}
		})
	}
	reason, _ := w.store.Follow(fctx, state.Revision+1, FollowOptions{ProgressInterval: w.cfg.ProgressInterval, Tick: resync.C, OnTick: check},
		func(events []*clientv3.Event, revision int64) error {
			received := time.Now()
			relevant := false
			for _, ev := range events {
				state.seen = ev.Kv.ModRevision
				if ev.Type == clientv3.EventTypeDelete {
					relevant = state.delete(string(ev.Kv.Key)) || relevant
				} else {
					relevant = state.put(string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision) || relevant
				}
			}
			// Node status and other keys under the prefix are not desired
			// state: delivering them would make every status write wake
			// every node.
			if relevant {
				state.Revision = revision
				w.deliver(state, false, received, onChange)
			}
			return nil
		})
	if reason == "" && missed.Load() && ctx.Err() == nil {
		return RelistPeriodic
	}
	if reason == RelistClosed {
		w.log.Warn("watch closed or failed; listing again")
	}
	return reason
}

// differs reads etcd at the check point's revision and reports whether
// it differs from what the watcher made of the same revision.
func (w *Watcher) differs(ctx context.Context, cp checkPoint) bool {
	same, err := w.store.holdsAt(ctx, cp)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("periodic check of the desired state failed; re-listing", "error", err)
		}
		return ctx.Err() == nil
	}
	if !same {
		w.log.Warn("the watch missed changes: the periodic check found a difference", "revision", cp.revision)
	}
	return !same
}

// Checks is how many periodic checks compared etcd with the watched state.
func (w *Watcher) Checks() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.checks
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// String describes the state briefly, for logs.
func (s *State) String() string {
	servers := 0
	for _, ss := range s.Services {
		servers += len(ss.Servers)
	}
	return fmt.Sprintf("revision %d: %d services, %d servers, %d invalid keys", s.Revision, len(s.Services), servers, len(s.Invalid))
}

package node

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// SyncDaemons is the part of ipvs.Client the connection sync sink drives.
type SyncDaemons interface {
	SyncDaemons(ctx context.Context) ([]ipvs.SyncDaemon, error)
	StartSyncDaemon(ctx context.Context, d ipvs.SyncDaemon) error
	StopSyncDaemon(ctx context.Context, role ipvs.DaemonRole) error
}

// syncSink keeps the node's IPVS connection sync daemons running as
// configured: a master sending this node's connections and a backup taking
// the other nodes', both at once. It checks them whenever it reports
// (every report period), so a daemon stopped or changed behind merlin's
// back is put back.
type syncSink struct {
	d       SyncDaemons
	want    []ipvs.SyncDaemon
	link    SyncLink      // nil: the link is not watched
	rearmed chan struct{} // the warm-up starts again (the node was ready)

	recordMu sync.Mutex // serializes SyncLink.Record
	mu       sync.Mutex
	running  map[ipvs.DaemonRole]bool
	err      string
	restored uint64
	started  bool // the first start is no restoration
	warm     warmUp
	linkErr  string
}

// SyncSink keeps the connection sync daemons running; it is also the
// node's warm-up gate (WarmUp).
type SyncSink interface {
	Sink
	WarmUp
}

// NewSyncSink is the sink that keeps the sync daemons want running. count
// reads the kernel's connection count for the warm-up, which lasts at
// most warmMax (0: DefaultSyncWarmMax); a carrier change of link (nil: not
// watched) starts it again.
func NewSyncSink(d SyncDaemons, count ConnCounter, warmMax time.Duration, link SyncLink, want ...ipvs.SyncDaemon) SyncSink {
	return &syncSink{d: d, want: want, link: link, rearmed: make(chan struct{}, 1), running: map[ipvs.DaemonRole]bool{},
		warm: warmUp{count: count, max: orDuration(warmMax, DefaultSyncWarmMax)}}
}

func (s *syncSink) Name() string { return "conn-sync" }

// Set makes sure of the daemons; the plan does not change them.
func (s *syncSink) Set(ctx context.Context, _ *Plan) error {
	err := s.ensure(ctx)
	s.watchLink(time.Now())
	return err
}

// ensure starts a missing daemon and restarts one whose settings differ.
func (s *syncSink) ensure(ctx context.Context) error {
	have, err := s.d.SyncDaemons(ctx)
	if err != nil {
		return s.note(err)
	}
	var errs []error
	running := map[ipvs.DaemonRole]bool{}
	repaired, backupStarted, backupFound := 0, false, false
	for _, w := range s.want {
		i := indexRole(have, w.Role)
		if i >= 0 && sameDaemon(have[i], w) {
			running[w.Role] = true
			if w.Role == ipvs.Backup {
				backupFound = true
			}
			continue
		}
		if i >= 0 {
			if err := s.d.StopSyncDaemon(ctx, w.Role); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := s.d.StartSyncDaemon(ctx, w); err != nil {
			errs = append(errs, err)
			continue
		}
		running[w.Role] = true
		repaired++
		if w.Role == ipvs.Backup {
			backupStarted = true
		}
	}
	s.mu.Lock()
	s.running = running
	if s.started {
		s.restored += uint64(repaired)
	}
	s.started = s.started || len(errs) == 0
	if !s.warm.decided && (backupFound || backupStarted) {
		// Found running: merlin restarted, the node did not, and its table
		// kept taking the others' connections. Started here: it starts now.
		s.warm.decided = true
		if backupStarted {
			s.warm.start = time.Now()
			s.warm.armed = s.warm.start
		}
	}
	s.mu.Unlock()
	return s.note(errors.Join(errs...))
}

func (s *syncSink) note(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = ""
	if err != nil {
		s.err = model.Truncate(err.Error(), 300)
	}
	return err
}

func indexRole(ds []ipvs.SyncDaemon, role ipvs.DaemonRole) int {
	for i, d := range ds {
		if d.Role == role {
			return i
		}
	}
	return -1
}

// sameDaemon: the running daemon has every setting wanted (a zero setting
// is the kernel's default, whatever it reports).
func sameDaemon(have, want ipvs.SyncDaemon) bool {
	if want.MaxLen == 0 {
		want.MaxLen = have.MaxLen
	}
	if !want.Group.IsValid() {
		want.Group = ipvs.DefaultSyncGroup
	}
	if want.Port == 0 {
		want.Port = ipvs.DefaultSyncPort
	}
	if want.TTL == 0 {
		want.TTL = ipvs.DefaultSyncTTL
	}
	return have == want
}

// Report checks the daemons again and puts them into node status.
func (s *syncSink) Report(ctx context.Context) (func(*types.NodeStatus), error) {
	_ = s.ensure(ctx) // its error is in the status
	s.watchLink(time.Now())
	st := s.status()
	return func(ns *types.NodeStatus) { ns.ConnSync = st }, nil
}

func (s *syncSink) status() *types.ConnSyncStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &types.ConnSyncStatus{Error: s.err, Restored: s.restored}
	if s.linkErr != "" {
		st.Error = strings.TrimPrefix(st.Error+"; ", "; ") + s.linkErr
	}
	for _, w := range s.want {
		d := &types.SyncDaemon{Role: w.Role.String(), Interface: w.Interface, SyncId: uint32(w.SyncID), Port: uint32(w.Port),
			Ttl: uint32(w.TTL), MaxLen: uint32(w.MaxLen), Running: s.running[w.Role]}
		if w.Group.IsValid() {
			d.Group = w.Group.String()
		}
		st.Daemons = append(st.Daemons, d)
	}
	return st
}

// Changed: the daemons are checked every report period.
func (s *syncSink) Changed() <-chan struct{} { return nil }

var (
	syncUpDesc = prometheus.NewDesc("merlin_ipvs_sync_daemon_up",
		"1 while the IPVS connection sync daemon of the role runs as configured.", []string{"role"}, nil)
	syncRestoredDesc = prometheus.NewDesc("merlin_ipvs_sync_daemon_restored_total",
		"Times merlin found a sync daemon stopped or changed behind its back and put it back.", nil, nil)
	syncRejoinsDesc = prometheus.NewDesc("merlin_ipvs_sync_rejoins_total",
		"Times the sync interface's carrier changed (also while merlin was stopped) and the node warmed up again before serving.", nil, nil)
)

// Describe and Collect export the daemons' state (as last checked).
func (s *syncSink) Describe(ch chan<- *prometheus.Desc) {
	ch <- syncUpDesc
	ch <- syncRestoredDesc
	ch <- syncRejoinsDesc
}

func (s *syncSink) Collect(ch chan<- prometheus.Metric) {
	st := s.status()
	for _, d := range st.Daemons {
		ch <- prometheus.MustNewConstMetric(syncUpDesc, prometheus.GaugeValue, b2f(d.Running), d.Role)
	}
	ch <- prometheus.MustNewConstMetric(syncRestoredDesc, prometheus.CounterValue, float64(st.Restored))
	s.mu.Lock()
	rejoins := s.warm.rejoins
	s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(syncRejoinsDesc, prometheus.CounterValue, float64(rejoins))
}

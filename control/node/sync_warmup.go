package node

import (
	"context"
	"fmt"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
)

// WarmUp holds a starting node back from serving until something has
// caught up (the connection sync sink: its table with the other nodes').
// WarmingUp says why the node is not ready yet ("" once it is) and when
// to ask again. It is asked until it first answers "", and again after
// Rearmed delivers.
type WarmUp interface {
	WarmingUp(ctx context.Context, now time.Time) (reason string, recheck time.Time)
	// Rearmed delivers when a node that was ready must warm up again.
	Rearmed() <-chan struct{}
}

// Warm-up bounds. The kernel re-sends an active connection at most
// SyncRefreshPeriod after it last did (datapath/netif SyncSysctls), so by
// minWarm every connection that carried a packet meanwhile has reached
// this node; a table that then grows by less than settleGrowth over
// settleEvery has caught up.
const (
	SyncRefreshPeriod  = 10 * time.Second
	minWarm            = 2 * SyncRefreshPeriod
	settleEvery        = 5 * time.Second
	settleGrowth       = 0.01
	DefaultSyncWarmMax = time.Minute
)

// ConnCounter counts the connections of the node's kernel table.
type ConnCounter func(ctx context.Context) (uint64, error)

// CountConnections sums the active and inactive connections of every
// destination (synced ones included), one dump per service: a warm-up
// reads it only every few seconds.
func CountConnections(c interface {
	Stats(ctx context.Context, keep func(ipvs.ServiceKey) bool) ([]ipvs.ServiceStats, error)
}) ConnCounter {
	return func(ctx context.Context) (uint64, error) {
		stats, err := c.Stats(ctx, func(ipvs.ServiceKey) bool { return true })
		var n uint64
		for _, s := range stats {
			for _, d := range s.Destinations {
				n += uint64(d.ActiveConnections) + uint64(d.InactiveConnections)
			}
		}
		return n, err
	}
}

// warmUp is the sync sink's judgement. It warms only when merlin itself
// started the backup daemon: a daemon that was running when merlin
// started (merlin restarted, the node did not) has kept the table current.
type warmUp struct {
	count     ConnCounter
	max       time.Duration
	decided   bool      // the backup daemon has been found running or started
	asked     time.Time // first WarmingUp call
	start     time.Time // when merlin started it (or the link came back); zero: no warm-up
	armed     time.Time // when this warm-up began: max counts from here
	lastCount uint64
	lastAt    time.Time
	done      bool
	// The sync link (watchLink): its carrier changes as last seen, whether
	// it is down now, and the warm-ups it started again.
	linkChanges uint64
	linkSeen    bool
	linkDown    bool
	rejoining   bool
	rejoins     uint64
}

// WarmingUp: at least minWarm after the backup started (or the sync link
// came back), then until the table's growth over settleEvery is below
// settleGrowth, or max passed.
func (s *syncSink) WarmingUp(ctx context.Context, now time.Time) (string, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	reason, recheck := s.warm.judge(ctx, now)
	if reason != "" && s.warm.rejoining {
		reason = "rejoining (the sync interface's carrier changed): " + reason
	}
	return reason, recheck
}

func (w *warmUp) judge(ctx context.Context, now time.Time) (string, time.Time) {
	switch {
	case w.done:
		return "", time.Time{}
	case !w.decided && w.asked.IsZero():
		w.asked = now
		fallthrough
	case !w.decided && now.Sub(w.asked) < w.max:
		return "waiting for the backup sync daemon", now.Add(time.Second)
	case !w.decided: // it cannot start (node status says why): serve without
		w.done = true
		return "", time.Time{}
	case w.start.IsZero(), now.Sub(w.armed) >= w.max:
		w.done = true
		return "", time.Time{}
	case w.linkDown: // a dedicated sync link may be down alone: max still bounds it
		return fmt.Sprintf("the sync interface has no carrier (stops at %s)", w.max), now.Add(time.Second)
	case now.Sub(w.start) < minWarm:
		return fmt.Sprintf("taking the other nodes' connections (at least %s; stops at %s)", minWarm, w.max), w.start.Add(minWarm)
	}
	if now.Sub(w.lastAt) < settleEvery && !w.lastAt.IsZero() {
		return w.reason(), w.lastAt.Add(settleEvery)
	}
	n, err := w.count(ctx)
	if err != nil {
		return "counting connections: " + err.Error(), now.Add(settleEvery)
	}
	settled := !w.lastAt.IsZero() && float64(n) <= float64(w.lastCount)*(1+settleGrowth)+10
	w.lastCount, w.lastAt = n, now
	if settled {
		w.done = true
		return "", time.Time{}
	}
	return w.reason(), now.Add(settleEvery)
}

func (w *warmUp) reason() string {
	return fmt.Sprintf("%d connections so far, still growing (stops at %s)", w.lastCount, w.max)
}

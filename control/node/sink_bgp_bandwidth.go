package node

import (
	"net/netip"
	"time"

	"github.com/merlin-ipvs/merlin/bgp"
)

// DefaultBandwidthInterval: a VIP's link bandwidth changes on the routers
// at most this often when health or weights move it.
const DefaultBandwidthInterval = 5 * time.Second

// bandwidthLimiter holds back link-bandwidth changes so that a flapping
// server does not churn the routers: a route whose bandwidth alone
// changed keeps the bandwidth last sent until interval has passed since
// that was sent. A new route, a route that gains or loses the community
// or changes otherwise, and a change of the node's own factor (a drain
// ramp's step, which is planned) go at once.
type bandwidthLimiter struct {
	interval  time.Duration
	now       func() time.Time
	perWeight float64                    // the plan's factor when routes were last sent
	sentBW    map[netip.Prefix]float32   // bandwidth last sent, by route
	sentAt    map[netip.Prefix]time.Time // when it was
	held      map[netip.Prefix]time.Time // routes held back, and until when
	due       time.Time                  // the earliest held change's time (zero: none)
}

func newBandwidthLimiter(interval time.Duration, now func() time.Time) *bandwidthLimiter {
	if interval <= 0 {
		interval = DefaultBandwidthInterval
	}
	return &bandwidthLimiter{interval: interval, now: now, sentBW: map[netip.Prefix]float32{}, sentAt: map[netip.Prefix]time.Time{},
		held: map[netip.Prefix]time.Time{}}
}

// limit returns routes with each held-back bandwidth replaced by the one
// last sent, and sets due.
func (l *bandwidthLimiter) limit(routes []bgp.Route, perWeight float64) []bgp.Route {
	clear(l.held)
	if perWeight == l.perWeight {
		now := l.now()
		for i, r := range routes {
			routes[i] = l.limitOne(r, now)
		}
	}
	l.setDue()
	return routes
}

// limitOne is r with its bandwidth held back if it must be (call setDue
// after the last).
func (l *bandwidthLimiter) limitOne(r bgp.Route, now time.Time) bgp.Route {
	delete(l.held, r.Prefix)
	old, ok := l.sentBW[r.Prefix]
	if !ok || old == 0 || r.LinkBandwidth == 0 || old == r.LinkBandwidth {
		return r
	}
	if at := l.sentAt[r.Prefix].Add(l.interval); now.Before(at) {
		r.LinkBandwidth = old
		l.held[r.Prefix] = at
	}
	return r
}

// setDue: the earliest time a held route is to be sent again.
func (l *bandwidthLimiter) setDue() {
	l.due = time.Time{}
	for _, at := range l.held {
		l.due = earliest(l.due, at)
	}
}

// sent records what the speaker now holds.
func (l *bandwidthLimiter) sent(routes []bgp.Route, perWeight float64) {
	now := l.now()
	next := make(map[netip.Prefix]float32, len(routes))
	for _, r := range routes {
		if r.LinkBandwidth == 0 {
			continue
		}
		next[r.Prefix] = r.LinkBandwidth
		if l.sentBW[r.Prefix] != r.LinkBandwidth {
			l.sentAt[r.Prefix] = now
		}
	}
	for p := range l.sentAt {
		if _, ok := next[p]; !ok {
			delete(l.sentAt, p)
		}
	}
	l.sentBW, l.perWeight = next, perWeight
}

// sentOne records that the speaker now holds r for prefix p (nil: it
// holds none).
func (l *bandwidthLimiter) sentOne(p netip.Prefix, r *bgp.Route, now time.Time) {
	if r == nil || r.LinkBandwidth == 0 {
		delete(l.sentBW, p)
		delete(l.sentAt, p)
		return
	}
	if l.sentBW[p] != r.LinkBandwidth {
		l.sentAt[p] = now
	}
	l.sentBW[p] = r.LinkBandwidth
}

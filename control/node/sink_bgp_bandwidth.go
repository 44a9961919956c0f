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
	due       time.Time                  // the earliest held change's time (zero: none)
}

func newBandwidthLimiter(interval time.Duration, now func() time.Time) *bandwidthLimiter {
	if interval <= 0 {
		interval = DefaultBandwidthInterval
	}
	return &bandwidthLimiter{interval: interval, now: now, sentBW: map[netip.Prefix]float32{}, sentAt: map[netip.Prefix]time.Time{}}
}

// limit returns routes with each held-back bandwidth replaced by the one
// last sent, and sets due.
func (l *bandwidthLimiter) limit(routes []bgp.Route, perWeight float64) []bgp.Route {
	l.due = time.Time{}
	if perWeight != l.perWeight {
		return routes
	}
	now := l.now()
	for i, r := range routes {
		old, ok := l.sentBW[r.Prefix]
		if !ok || old == 0 || r.LinkBandwidth == 0 || old == r.LinkBandwidth {
			continue
		}
		if at := l.sentAt[r.Prefix].Add(l.interval); now.Before(at) {
			routes[i].LinkBandwidth = old
			l.due = earliest(l.due, at)
		}
	}
	return routes
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

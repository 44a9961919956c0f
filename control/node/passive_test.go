package node

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/health"
)

type reports struct{ got map[health.Check][]error }

func (r *reports) Report(c health.Check, err error) bool {
	if r.got == nil {
		r.got = map[health.Check][]error{}
	}
	r.got[c] = append(r.got[c], err)
	return true
}

// The window subtracts the sample a window back; a server that answers
// counts nothing, one whose attempts go unanswered fails once per look.
func TestPassiveJudgesOverTheWindow(t *testing.T) {
	good := xdpstats.ServerKey{Method: xdpstats.NAT, Addr: netip.MustParseAddr("198.19.0.1"), Port: 8080, Proto: xdpstats.TCP}
	bad := xdpstats.ServerKey{Method: xdpstats.NAT, Addr: netip.MustParseAddr("198.19.0.2"), Port: 8080, Proto: xdpstats.TCP}
	badCheck := health.Check{Kind: health.TCP, Target: netip.MustParseAddrPort("198.19.0.2:8080")}
	judge := func(label string, c health.Check) PassiveJudge {
		return PassiveJudge{Label: newServerLabel("web", label), Check: c, Window: 5 * time.Second, MinAttempts: 5, MaxFailedPercent: 50}
	}
	fc := &fakeCounters{}
	tr := NewTraffic(nil, fc, TrafficOptions{})
	tr.index.edit(func(idx *CounterIndex) {
		idx.Passive = map[xdpstats.ServerKey]PassiveJudge{good: judge("198.19.0.1:8080", health.Check{Kind: health.TCP}), bad: judge("198.19.0.2:8080", badCheck)}
	})
	r := &reports{}
	start := time.Unix(1000, 0)
	// Ten seconds: both servers get 4 attempts a second; good answers all,
	// bad refuses 3 of 4 (the counters are running totals).
	for i := range 11 {
		n := uint64(4 * i)
		fc.setSnap(xdpstats.Snapshot{
			Forwarded: map[xdpstats.ServerKey]xdpstats.Counters{good: {SYN: n}, bad: {SYN: n}},
			Replies:   map[xdpstats.ServerKey]xdpstats.Counters{good: {SYNACK: n}, bad: {SYNACK: n / 4, RST: n - n/4}},
		})
		tr.passive.judge(start.Add(time.Duration(i)*time.Second), r)
	}
	if len(r.got[health.Check{Kind: health.TCP}]) != 0 {
		t.Fatalf("a server that answers was reported: %v", r.got)
	}
	errs := r.got[badCheck]
	// Judged once it had 5 attempts (the second look) and at each look after.
	if len(errs) != 9 || !strings.Contains(errs[len(errs)-1].Error(), "passive: 15 of 20 connection attempts in 5s not answered (15 refused)") {
		t.Fatalf("reports for the refusing server: %v", errs)
	}
	failing := tr.passive.failing()
	if len(failing) != 1 || failing[0].Server != "198.19.0.2:8080" || failing[0].Attempts != 20 || failing[0].Refused != 15 {
		t.Fatalf("failing in status: %v", failing)
	}
}

func TestPassiveFiguresFailed(t *testing.T) {
	j := PassiveJudge{MinAttempts: 5, MaxFailedPercent: 50}
	for _, tc := range []struct {
		f    PassiveFigures
		want bool
	}{
		{PassiveFigures{Attempts: 4, Answered: 0}, false},  // too few to judge
		{PassiveFigures{Attempts: 10, Answered: 5}, false}, // exactly the limit
		{PassiveFigures{Attempts: 10, Answered: 4}, true},
		{PassiveFigures{Attempts: 10, Answered: 12}, false}, // retransmitted SYN-ACKs
	} {
		if got := tc.f.Failed(j); got != tc.want {
			t.Errorf("%+v failed = %v, want %v", tc.f, got, tc.want)
		}
	}
}

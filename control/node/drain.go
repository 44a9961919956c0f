package node

import (
	"time"

	"github.com/merlin-ipvs/merlin/control/store"
)

// DrainState is where a node's drain stands at one moment.
type DrainState struct {
	Phase DrainPhase
	// Share is the part of the node's link bandwidth announced: 1 until a
	// ramp starts, then lower at each step.
	Share       float64
	Step, Steps int
	// Next: when it moves on (zero: it does not).
	Next time.Time
}

// maxRampSteps: a ramp lowers the bandwidth in at most this many steps
// (one a second for ramps under 10 s).
const maxRampSteps = 10

// drainState says where a drain stands at now. A ramp of N steps
// announces N/(N+1), (N-1)/(N+1) … 1/(N+1) of the bandwidth, each for
// ramp/N; then the graceful shutdown (still at 1/(N+1): never 0, which
// routers read as no bandwidth at all) lasts WithdrawAfter; then drained.
func drainState(d *store.Drain, now time.Time) DrainState {
	if d == nil {
		return DrainState{Phase: NotDraining, Share: 1}
	}
	ramp := min(max(d.Ramp, 0), store.MaxDrainRamp) // a stored value is not trusted
	steps := rampSteps(ramp)
	st := DrainState{Phase: Ramping, Steps: steps, Share: 1}
	elapsed := now.Sub(d.Since)
	if elapsed < 0 {
		elapsed = 0
	}
	if elapsed < ramp {
		stepLen := ramp / time.Duration(steps)
		st.Step = min(int(elapsed/stepLen)+1, steps)
		st.Share = float64(steps+1-st.Step) / float64(steps+1)
		st.Next = d.Since.Add(stepLen * time.Duration(st.Step))
		if st.Step == steps {
			st.Next = d.Since.Add(ramp)
		}
		return st
	}
	st.Step = steps
	if steps > 0 {
		st.Share = 1 / float64(steps+1)
	}
	end := d.Since.Add(ramp + max(d.WithdrawAfter, 0))
	if now.Before(end) {
		st.Phase, st.Next = Draining, end
		return st
	}
	st.Phase = Drained
	return st
}

func rampSteps(ramp time.Duration) int {
	if ramp <= 0 {
		return 0
	}
	return max(1, min(maxRampSteps, int(ramp/time.Second)))
}

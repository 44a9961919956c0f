package node

import (
	"time"

	"github.com/merlin-ipvs/merlin/control/store"
)

// drainPhase says where a drain stands at now, and when it moves on (zero:
// it does not).
func drainPhase(d *store.Drain, now time.Time) (DrainPhase, time.Time) {
	if d == nil {
		return NotDraining, time.Time{}
	}
	end := d.Since.Add(d.WithdrawAfter)
	if now.Before(end) {
		return Draining, end
	}
	return Drained, time.Time{}
}

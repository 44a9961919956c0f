package node

import (
	"time"
)

// SyncLink is the interface the sync daemons use, as the kernel counts
// its carrier: whether it is up, and how many times it has changed since
// the interface was created. A change means the node may have missed
// other nodes' connections, so it warms up again before it serves.
type SyncLink interface {
	Carrier() (up bool, changes uint64, err error)
	// Recorded is the count the previous merlin of this boot saw last
	// (ok false: none, such as on a fresh boot); Record keeps it.
	Recorded() (changes uint64, ok bool)
	Record(changes uint64) error
}

// watchLink re-arms the warm-up when the sync link's carrier changed since
// it last looked — also while merlin was away (the count it recorded) —
// and starts the warm-up's clock once the link is up again.
func (s *syncSink) watchLink(now time.Time) {
	if s.link == nil {
		return
	}
	up, changes, err := s.link.Carrier()
	if err != nil {
		s.noteLink(err.Error())
		return
	}
	s.noteLink("")
	s.mu.Lock()
	w := &s.warm
	before, known := w.linkChanges, w.linkSeen
	if !known {
		before, known = s.link.Recorded()
	}
	w.linkChanges, w.linkSeen = changes, true
	if known && changes != before {
		w.rejoin(now, up, s.rearmed)
	}
	s.mu.Unlock()
	if !known || changes != before {
		s.recordMu.Lock() // Set and Report both look: one file write at a time
		defer s.recordMu.Unlock()
		if err := s.link.Record(changes); err != nil {
			s.noteLink("record the sync link's state: " + err.Error())
		}
	}
}

// rejoin starts the warm-up again: the node was cut from the other
// nodes' sync messages for a while. A change during a rejoin's warm-up
// (the link back, or flapping) restarts its clock, not its maximum.
func (w *warmUp) rejoin(now time.Time, up bool, rearmed chan struct{}) {
	w.linkDown, w.start, w.lastAt = !up, now, time.Time{}
	if w.rejoining && !w.done {
		return
	}
	wasDone := w.done
	w.done, w.decided, w.rejoining, w.armed = false, true, true, now
	w.rejoins++
	if wasDone {
		select {
		case rearmed <- struct{}{}:
		default:
		}
	}
}

func (s *syncSink) noteLink(err string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.linkErr = err
}

// Rearmed delivers when a node that was ready must warm up again.
func (s *syncSink) Rearmed() <-chan struct{} { return s.rearmed }

package node

import (
	"cmp"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/types"
)

// objectID names a desired object: a service, or one of its servers. An
// owned kernel service that is no longer desired is named by its key.
type objectID struct {
	service, server string
	orphan          ipvs.ServiceKey
}

type failure struct {
	err      string
	attempts uint32
	next     time.Time
}

// failures are the objects this node could not program, each retried on
// its own backoff.
type failures struct {
	first, most time.Duration
	byID        map[objectID]*failure
}

func newFailures(first, most time.Duration) *failures {
	return &failures{first: first, most: most, byID: map[objectID]*failure{}}
}

// add records a failure (again) and returns whether it is new.
func (f *failures) add(id objectID, err error, now time.Time) bool {
	fl := f.byID[id]
	isNew := fl == nil
	if isNew {
		fl = &failure{}
		f.byID[id] = fl
	}
	fl.err = err.Error()
	fl.attempts++
	fl.next = now.Add(min(f.first<<min(fl.attempts-1, 16), f.most))
	return isNew
}

func (f *failures) clear(id objectID) { delete(f.byID, id) }

// clearService forgets every failure of a service and its servers.
func (f *failures) clearService(serviceID string) {
	for id := range f.byID {
		if id.service == serviceID {
			delete(f.byID, id)
		}
	}
}

// waiting: the object failed and its retry is not due yet.
func (f *failures) waiting(id objectID, now time.Time) bool {
	fl := f.byID[id]
	return fl != nil && fl.next.After(now)
}

// holdBehind moves the due retries of a service's servers to the retry of
// the service itself (waiting): they cannot be tried before it, and a due
// time left in the past would make the runner spin.
func (f *failures) holdBehind(serviceID string, now time.Time) {
	svc := f.byID[objectID{service: serviceID}]
	if svc == nil {
		return
	}
	for id, fl := range f.byID {
		if id.service == serviceID && !fl.next.After(now) {
			fl.next = svc.next
		}
	}
}

// due lists the failures whose retry is due.
func (f *failures) due(now time.Time) []objectID {
	var ids []objectID
	for id, fl := range f.byID {
		if !fl.next.After(now) {
			ids = append(ids, id)
		}
	}
	return ids
}

// next is the earliest retry (zero: none).
func (f *failures) next() time.Time {
	var next time.Time
	for _, fl := range f.byID {
		if next.IsZero() || fl.next.Before(next) {
			next = fl.next
		}
	}
	return next
}

func (f *failures) services() map[string]bool {
	ids := map[string]bool{}
	for id := range f.byID {
		ids[id.service] = true
	}
	return ids
}

func (f *failures) report() []*types.ObjectError {
	out := make([]*types.ObjectError, 0, len(f.byID))
	for id, fl := range f.byID {
		out = append(out, &types.ObjectError{ServiceId: id.service, Server: id.server, Error: fl.err, Attempts: fl.attempts, NextRetry: timestamppb.New(fl.next)})
	}
	slices.SortFunc(out, func(a, b *types.ObjectError) int {
		return cmp.Or(cmp.Compare(a.ServiceId, b.ServiceId), cmp.Compare(a.Server, b.Server))
	})
	return out
}

package api

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/types"
)

// DefaultWatchBuffer is how many bytes of events may wait for one Watch
// client before it is cut off as too slow (like etcd's slow watchers).
const DefaultWatchBuffer = 4 << 20

// sendQueue sends a stream's events from its own goroutine, so that a
// client that does not read holds at most limit bytes here (and gRPC's
// flow-control window) instead of backing up the store's watch.
type sendQueue struct {
	stream grpc.ServerStreamingServer[types.WatchEvent]
	limit  int

	mu       sync.Mutex
	queue    []*types.WatchEvent
	bytes    int
	err      error         // the first Send failure
	cut      bool          // the client was cut off for not reading
	wake     chan struct{} // an event was queued
	progress chan struct{} // an event was sent
	stopped  chan struct{}
}

func newSendQueue(stream grpc.ServerStreamingServer[types.WatchEvent], limit int) *sendQueue {
	return &sendQueue{stream: stream, limit: limit, wake: make(chan struct{}, 1), progress: make(chan struct{}, 1), stopped: make(chan struct{})}
}

// pushWait queues an event of a snapshot, waiting while the queue is full
// for the client to read; false when it read nothing for stall, sending
// failed or ctx ended.
func (q *sendQueue) pushWait(ctx context.Context, ev *types.WatchEvent, stall time.Duration) bool {
	timer := time.NewTimer(stall)
	defer timer.Stop()
	for {
		if ok, full := q.tryPush(ev); !full {
			return ok
		}
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return false
		case <-q.progress:
			timer.Reset(stall)
		}
	}
}

// drained waits until at most half the limit waits (a snapshot mostly
// read), so that live events have room; false when the client read
// nothing for stall or ctx ended.
func (q *sendQueue) drained(ctx context.Context, stall time.Duration) bool {
	timer := time.NewTimer(stall)
	defer timer.Stop()
	for {
		q.mu.Lock()
		bytes, err := q.bytes, q.err
		q.mu.Unlock()
		if err != nil {
			return false
		}
		if bytes <= q.limit/2 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return false
		case <-q.progress:
			timer.Reset(stall)
		}
	}
}

// tryPush queues ev unless that would put the queue over its limit.
func (q *sendQueue) tryPush(ev *types.WatchEvent) (ok, full bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return false, false
	}
	n := proto.Size(ev)
	if q.bytes > 0 && q.bytes+n > q.limit {
		return false, true
	}
	q.bytes += n
	q.queue = append(q.queue, ev)
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true, false
}

// push queues an event; false when the queue is over its limit (the
// client is too slow) or sending failed.
func (q *sendQueue) push(ev *types.WatchEvent) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return false
	}
	q.bytes += proto.Size(ev)
	if q.bytes > q.limit {
		return false
	}
	q.queue = append(q.queue, ev)
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// oldest is the revision of the first event not yet sent (0: none).
func (q *sendQueue) oldest() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) == 0 {
		return 0
	}
	return q.queue[0].Revision
}

// run sends until ctx ends or a Send fails.
func (q *sendQueue) run(ctx context.Context) {
	defer close(q.stopped)
	for {
		q.mu.Lock()
		if len(q.queue) == 0 {
			q.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			}
			continue
		}
		ev := q.queue[0]
		q.mu.Unlock()
		err := q.stream.Send(ev)
		q.mu.Lock()
		q.queue = q.queue[1:]
		q.bytes -= proto.Size(ev)
		if err != nil {
			q.err = err
		}
		q.mu.Unlock()
		select {
		case q.progress <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// cutOff marks the client as cut off for not reading.
func (q *sendQueue) cutOff() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.cut = true
}

func (q *sendQueue) wasCutOff() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.cut
}

// sendErr is the Send failure that stopped the queue, if any.
func (q *sendQueue) sendErr() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err
}

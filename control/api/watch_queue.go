package api

import (
	"context"
	"sync"

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

	mu      sync.Mutex
	queue   []*types.WatchEvent
	bytes   int
	err     error         // the first Send failure
	wake    chan struct{} // an event was queued
	stopped chan struct{}
}

func newSendQueue(stream grpc.ServerStreamingServer[types.WatchEvent], limit int) *sendQueue {
	return &sendQueue{stream: stream, limit: limit, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
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
		if err != nil {
			return
		}
	}
}

// sendErr is the Send failure that stopped the queue, if any.
func (q *sendQueue) sendErr() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err
}

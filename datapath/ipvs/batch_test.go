package ipvs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
)

// fakeKernel stands behind Client's socket seam and answers a batch as
// the kernel does: each message handled in order, an error report for a
// failing one, an acknowledgement where one is asked for, reports queued
// up to the receive buffer (beyond it dropped, and the next receive fails
// with ENOBUFS). Tests script failures by op ordinal (every op ever sent).
type fakeKernel struct {
	fail      map[int]syscall.Errno // op ordinal → errno
	capacity  int                   // reports the receive buffer holds (0: unbounded)
	hang      bool                  // the last op of a batch never reports (the deadline passes)
	sendErr   error                 // every sendmsg fails
	ops       int                   // ops handled so far
	batches   []int                 // ops per sendmsg
	queue     [][]byte
	overflow  bool
	dials     int
	closed    int
	stale     [][]byte // queued at the next dial, as reports of interrupted requests
	rcvBuffer int
}

func (k *fakeKernel) dial(Options) (socket, sockInfo, error) {
	k.dials++
	k.queue, k.overflow = append([][]byte(nil), k.stale...), false
	return k, sockInfo{family: 42, pid: 7, rcvBuf: k.rcvBuffer, sndBuf: 4 << 20}, nil
}

func (k *fakeKernel) SendMessages(msgs []netlink.Message) error {
	if k.sendErr != nil {
		return k.sendErr
	}
	k.batches = append(k.batches, len(msgs))
	for i, m := range msgs {
		errno := k.fail[k.ops]
		k.ops++
		if k.hang && i == len(msgs)-1 {
			continue
		}
		if errno != 0 || m.Header.Flags&netlink.Acknowledge != 0 {
			k.report(m.Header.Sequence, errno)
		}
	}
	return nil
}

func (k *fakeKernel) report(seq uint32, errno syscall.Errno) {
	if k.capacity > 0 && len(k.queue) >= k.capacity {
		k.overflow = true
		return
	}
	k.queue = append(k.queue, errorDatagram(seq, errno))
}

// errorDatagram is an NLMSG_ERROR message: errno 0 is an acknowledgement.
func errorDatagram(seq uint32, errno syscall.Errno) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(nlmsgHdrLen+4+nlmsgHdrLen))
	b = binary.NativeEndian.AppendUint16(b, nlmsgError)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 7)
	b = binary.NativeEndian.AppendUint32(b, uint32(-int32(errno)))
	return append(b, make([]byte, nlmsgHdrLen)...) // the echoed request header
}

func (k *fakeKernel) Receive() ([]byte, error) {
	if k.overflow {
		k.overflow = false
		return nil, syscall.ENOBUFS
	}
	if d, ok := k.ReceiveQueued(); ok {
		return d, nil
	}
	return nil, os.ErrDeadlineExceeded
}

func (k *fakeKernel) ReceiveQueued() ([]byte, bool) {
	if len(k.queue) == 0 {
		return nil, false
	}
	d := k.queue[0]
	k.queue = k.queue[1:]
	return d, true
}

func (k *fakeKernel) SetDeadline(time.Time) error { return nil }
func (k *fakeKernel) Close() error                { k.closed++; return nil }

func fakeClient(t *testing.T, k *fakeKernel, opts Options) *Client {
	t.Helper()
	c, err := open(opts, k.dial)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// destOps: n destination adds to one service, each valid.
func destOps(n int) []Op {
	svc := Service{Key: ServiceKey{Protocol: TCP, Address: netip.MustParseAddr("198.18.0.1"), Port: 80}}
	ops := make([]Op, n)
	for i := range ops {
		ops[i] = Op{Kind: OpAddDestination, Service: svc, Destination: Destination{
			Key:    DestinationKey{Address: netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), Port: 8080},
			Config: DestinationConfig{Weight: 1},
		}}
	}
	return ops
}

// outcome is each op's result: "" applied, else the error's class.
func outcome(n int, err error) []string {
	out := make([]string, n)
	var be *BatchError
	if err == nil || !errors.As(err, &be) {
		return out
	}
	for _, f := range be.Failed {
		switch {
		case errors.Is(f.Err, ErrNotSent):
			out[f.Index] = "not sent"
		case errors.Is(f.Err, ErrOutcomeUnknown):
			out[f.Index] = "unknown"
		default:
			out[f.Index] = f.Err.Error()
		}
	}
	return out
}

func want(n int, set map[int]string) []string {
	out := make([]string, n)
	for i, v := range set {
		out[i] = v
	}
	return out
}

func TestBatchMapsEachReportToItsOp(t *testing.T) {
	k := &fakeKernel{fail: map[int]syscall.Errno{3: syscall.EEXIST, 7: syscall.ENOENT}, rcvBuffer: 1 << 20}
	c := fakeClient(t, k, Options{})
	got := outcome(10, c.Apply(context.Background(), destOps(10)))
	if w := want(10, map[int]string{3: syscall.EEXIST.Error(), 7: syscall.ENOENT.Error()}); !slices.Equal(got, w) {
		t.Errorf("outcomes %q, want %q", got, w)
	}
	if !slices.Equal(k.batches, []int{10}) {
		t.Errorf("sendmsg sizes %v, want one of 10", k.batches)
	}
}

func TestBatchSkipsReportsOfInterruptedRequests(t *testing.T) {
	// Reports of an earlier request that a deadline interrupted are still
	// queued: the first with this batch's first sequence number minus one,
	// one far away, and an acknowledgement that would end the batch early
	// if it were taken for this batch's last.
	k := &fakeKernel{fail: map[int]syscall.Errno{1: syscall.EINVAL}, rcvBuffer: 1 << 20}
	c := fakeClient(t, k, Options{})
	first := c.seq + 1
	k.queue = [][]byte{errorDatagram(first-1, syscall.EEXIST), errorDatagram(first+1000, syscall.EPERM), errorDatagram(first-2, 0)}
	got := outcome(4, c.Apply(context.Background(), destOps(4)))
	if w := want(4, map[int]string{1: syscall.EINVAL.Error()}); !slices.Equal(got, w) {
		t.Errorf("outcomes %q, want %q", got, w)
	}
}

func TestBatchHalvesAfterDroppedReports(t *testing.T) {
	// Every op fails but the receive buffer holds 3 reports: the rest are
	// dropped. Ops whose report was read fail with their errno, the others
	// are unknown; the next batch is half as large, on a fresh socket.
	fail := map[int]syscall.Errno{}
	for i := range 64 {
		fail[i] = syscall.EEXIST
	}
	k := &fakeKernel{fail: fail, capacity: 3, rcvBuffer: 40 * errReportSize}
	c := fakeClient(t, k, Options{})
	got := outcome(40, c.Apply(context.Background(), destOps(40)))
	w := make([]string, 40)
	for i := range w {
		w[i] = "unknown"
	}
	w[0], w[1], w[2] = syscall.EEXIST.Error(), syscall.EEXIST.Error(), syscall.EEXIST.Error()
	if !slices.Equal(got, w) {
		t.Errorf("outcomes %q, want %q", got, w)
	}
	k.fail = nil
	if err := c.Apply(context.Background(), destOps(40)); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(k.batches, []int{40, 20, 20}) || k.dials != 2 {
		t.Errorf("sendmsg sizes %v after %d dials, want [40 20 20] after a re-dial", k.batches, k.dials)
	}
}

func TestBatchDeadlineLeavesUnreportedOpsUnknown(t *testing.T) {
	// The last op's acknowledgement never comes: the failure reported
	// before it stands, the rest is unknown, the socket is re-dialed.
	k := &fakeKernel{fail: map[int]syscall.Errno{2: syscall.EEXIST}, hang: true, rcvBuffer: 1 << 20}
	c := fakeClient(t, k, Options{})
	got := outcome(5, c.Apply(context.Background(), destOps(5)))
	if w := want(5, map[int]string{0: "unknown", 1: "unknown", 2: syscall.EEXIST.Error(), 3: "unknown", 4: "unknown"}); !slices.Equal(got, w) {
		t.Errorf("outcomes %q, want %q", got, w)
	}
	k.hang = false
	if err := c.Apply(context.Background(), destOps(1)); err != nil || k.dials != 2 || k.closed != 1 {
		t.Errorf("after the deadline: %v, %d dials, %d closes; want a fresh socket", err, k.dials, k.closed)
	}
}

func TestBatchChunksAndSendFailure(t *testing.T) {
	// 10 ops, 4 per sendmsg: the second sendmsg fails, so ops 4-9 were
	// never sent; the first four applied.
	k := &fakeKernel{rcvBuffer: 1 << 20}
	c := fakeClient(t, k, Options{MaxBatchOps: 4})
	calls := 0
	c.sock = &failingSend{fakeKernel: k, after: 1, calls: &calls}
	got := outcome(10, c.Apply(context.Background(), destOps(10)))
	w := want(10, nil)
	for i := 4; i < 10; i++ {
		w[i] = "not sent"
	}
	if !slices.Equal(got, w) {
		t.Errorf("outcomes %q, want %q", got, w)
	}
}

// failingSend fails every sendmsg after the first `after`.
type failingSend struct {
	*fakeKernel
	after int
	calls *int
}

func (f *failingSend) SendMessages(msgs []netlink.Message) error {
	if *f.calls++; *f.calls > f.after {
		return fmt.Errorf("sendmsg: %w", syscall.EPIPE)
	}
	return f.fakeKernel.SendMessages(msgs)
}

func TestBatchContextEndedSendsNothing(t *testing.T) {
	k := &fakeKernel{rcvBuffer: 1 << 20}
	c := fakeClient(t, k, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Apply(ctx, destOps(3)); err == nil || k.ops != 0 {
		t.Errorf("Apply with an ended context: %v, %d ops sent", err, k.ops)
	}
}

// TestAppendMessages: the datagram the socket sends is what netlink.Conn
// sends for the same messages, byte for byte (headers, data, padding).
func TestAppendMessages(t *testing.T) {
	var msgs []netlink.Message
	var want []byte
	for i := range 50 {
		m := netlink.Message{Header: netlink.Header{Length: uint32(nlmsgHdrLen+i%9+3) &^ 3, Type: 42, Flags: netlink.Request | netlink.Acknowledge,
			Sequence: uint32(1000 + i), PID: 7}, Data: make([]byte, i%9)}
		for j := range m.Data {
			m.Data[j] = byte(i + j)
		}
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		msgs, want = append(msgs, m), append(want, b...)
	}
	if got := appendMessages([]byte{1, 2, 3}[:0], msgs); !slices.Equal(got, want) {
		t.Fatalf("datagram of %d bytes differs from netlink.Conn's (%d bytes)", len(got), len(want))
	}
}

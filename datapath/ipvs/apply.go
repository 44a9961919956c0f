package ipvs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"

	"github.com/mdlayher/netlink"
)

// Apply sends ops to the kernel in order, many per sendmsg, and reports
// every op that did not apply in a *BatchError; all other ops applied. The
// kernel goes on after a failed op, so one bad op fails alone.
//
// Successful ops are silent; only failures and the last op of each sendmsg
// are acknowledged, and each sendmsg carries no more ops than the receive
// buffer has room for failure reports, so no report can be dropped. If the
// context ends, ops not yet sent fail with ErrNotSent and ops sent but not
// yet confirmed with ErrOutcomeUnknown. Apply is not atomic: after a
// failure, read the table again.
func (c *Client) Apply(ctx context.Context, ops []Op) error {
	if len(ops) == 0 {
		return nil
	}
	end, err := c.begin(ctx)
	if err != nil {
		return err
	}
	defer end()
	b := &batch{ops: ops}
	for i := 0; i < len(ops); {
		if c.broken {
			if err := c.redial(); err != nil {
				b.failRest(i, err)
				break
			}
		}
		if err := ctx.Err(); err != nil {
			b.failRest(i, err)
			break
		}
		chunk := c.encodeChunk(b, i)
		if err := c.sendChunk(chunk); err != nil {
			b.failRest(i, err)
			break
		}
		c.collectReports(b, chunk)
		i = chunk.next
	}
	if len(b.failed) > 0 {
		return &BatchError{Total: len(ops), Failed: sortOpErrors(b.failed)}
	}
	return nil
}

// batch is one Apply: the ops and what failed of them.
type batch struct {
	ops     []Op
	failed  []*OpError
	settled map[int]bool // ops already reported (failed to encode)
}

func (b *batch) fail(i int, err error) {
	b.failed = append(b.failed, &OpError{Index: i, Op: b.ops[i], Err: err})
}

// failRest fails every op from i on that has no outcome yet as not sent.
func (b *batch) failRest(i int, err error) {
	for ; i < len(b.ops); i++ {
		if !b.settled[i] {
			b.fail(i, fmt.Errorf("%w: %w", ErrNotSent, err))
		}
	}
}

// chunk is the ops of one sendmsg: their indexes in the batch and their
// sequence numbers first, first+1, ...
type chunk struct {
	index []int // op index of each message
	msgs  []netlink.Message
	first uint32
	next  int // the op to start the next chunk with
}

// encodeChunk encodes ops from start on, as many as one sendmsg may carry
// (maxOps reports must fit the receive buffer; maxSend bytes the send
// buffer). Ops that fail to encode are failed and skipped.
func (c *Client) encodeChunk(b *batch, start int) chunk {
	buf := c.wbuf[:0]
	offs := c.seqIdx[:0] // pairs: op index, end offset of its payload in buf
	bytes := 0
	i := start
	for ; i < len(b.ops) && len(offs)/2 < c.maxOps; i++ {
		mark := len(buf)
		nb, _, encErr := encodeOp(buf, b.ops[i])
		if encErr != nil {
			if b.settled == nil {
				b.settled = map[int]bool{}
			}
			b.settled[i] = true
			b.fail(i, fmt.Errorf("encode: %w", encErr))
			continue
		}
		size := nlmsgHdrLen + len(nb) - mark
		if bytes+size > c.maxSend && len(offs) > 0 {
			buf = nb[:mark]
			break
		}
		buf, bytes = nb, bytes+size
		offs = append(offs, i, len(buf))
	}
	c.wbuf, c.seqIdx = buf, offs
	n := len(offs) / 2
	ch := chunk{first: c.seq + 1, next: i, index: make([]int, n), msgs: c.msgs[:0]}
	prev := 0
	for k := range n {
		flags := netlink.Request
		if k == n-1 {
			flags |= netlink.Acknowledge // only failures and the last op report
		}
		ch.index[k] = offs[2*k]
		ch.msgs = append(ch.msgs, netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(c.family), Flags: flags, Sequence: c.nextSeq(), PID: c.pid},
			Data:   buf[prev:offs[2*k+1]],
		})
		prev = offs[2*k+1]
	}
	c.msgs = ch.msgs
	return ch
}

// sendChunk sends a chunk in one sendmsg; on an error nothing of it was
// sent and the socket is re-dialed before the next use.
func (c *Client) sendChunk(ch chunk) error {
	if len(ch.msgs) == 0 {
		return nil
	}
	if err := c.sock.SendMessages(ch.msgs); err != nil {
		c.broken = true
		return fmt.Errorf("send batch: %w", err)
	}
	return nil
}

// collectReports reads the kernel's reports for a chunk until the last
// op's acknowledgement, failing the ops that report an error. Reports of
// earlier, interrupted requests are skipped by sequence number. If reports
// were lost (ENOBUFS: the next chunks are halved), the deadline passed or
// the socket failed, every op without a report has an unknown outcome.
func (c *Client) collectReports(b *batch, ch chunk) {
	n := len(ch.msgs)
	if n == 0 {
		return
	}
	last := ch.first + uint32(n) - 1
	reported := make([]bool, n)
	collect := func(d []byte) (bool, error) {
		return eachMessage(d, func(m nlMessage) (bool, error) {
			k := m.seq - ch.first
			if m.typ != nlmsgError || k >= uint32(n) {
				return false, nil // left over from an interrupted request
			}
			reported[k] = true
			if err := errorReport(m); err != nil {
				b.fail(ch.index[k], err)
			}
			return m.seq == last, nil
		})
	}
	err := c.receiveReports(collect)
	if err == nil {
		return
	}
	c.broken = true
	if errors.Is(err, syscall.ENOBUFS) {
		c.maxOps = max(c.maxOps/2, 16)
		c.opsCap = c.maxOps
	}
	for k := range n {
		if !reported[k] {
			b.fail(ch.index[k], fmt.Errorf("%w: %w", ErrOutcomeUnknown, err))
		}
	}
}

// receiveReports feeds datagrams to collect until it is done. After a
// receive error, the reports already queued are read all the same: the
// kernel handles the whole sendmsg before it returns, so every report it
// did not drop is queued (after a deadline all of them, after ENOBUFS the
// ones that fitted).
func (c *Client) receiveReports(collect func([]byte) (bool, error)) error {
	for {
		d, err := c.sock.Receive()
		if err != nil {
			for {
				q, ok := c.sock.ReceiveQueued()
				if !ok {
					return err
				}
				done, perr := collect(q)
				if perr != nil {
					return err
				}
				if done {
					if errors.Is(err, syscall.ENOBUFS) {
						return err
					}
					return nil
				}
			}
		}
		done, perr := collect(d)
		if perr != nil {
			return perr
		}
		if done {
			return nil
		}
	}
}

func sortOpErrors(errs []*OpError) []*OpError {
	slices.SortStableFunc(errs, func(a, b *OpError) int { return a.Index - b.Index })
	return errs
}

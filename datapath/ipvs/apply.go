package ipvs

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
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

	var failed []*OpError
	fail := func(i int, err error) { failed = append(failed, &OpError{Index: i, Op: ops[i], Err: err}) }
	for i := 0; i < len(ops); {
		if c.broken {
			c.nl.Close()
			if err := c.dial(); err != nil {
				c.broken = true
				for ; i < len(ops); i++ {
					fail(i, fmt.Errorf("%w: %w", ErrNotSent, err))
				}
				break
			}
		}
		if err := ctx.Err(); err != nil {
			for ; i < len(ops); i++ {
				fail(i, fmt.Errorf("%w: %w", ErrNotSent, err))
			}
			break
		}
		next, chunkErrs, sendErr := c.applyChunk(ops, i, fail)
		if sendErr != nil {
			for ; i < len(ops); i++ {
				if !chunkErrs[i] {
					fail(i, fmt.Errorf("%w: %w", ErrNotSent, sendErr))
				}
			}
			break
		}
		i = next
	}
	if len(failed) > 0 {
		return &BatchError{Total: len(ops), Failed: sortOpErrors(failed)}
	}
	return nil
}

// applyChunk encodes and sends ops[start:next] in one sendmsg and collects
// the kernel's reports. Ops that fail to encode are reported and skipped.
// A non-nil error means nothing from start on was sent; skipped holds the
// ops already reported.
func (c *Client) applyChunk(ops []Op, start int, fail func(int, error)) (next int, skipped map[int]bool, err error) {
	buf := c.wbuf[:0]
	offs := c.seqIdx[:0] // pairs: op index, end offset of its payload in buf
	bytes := 0
	i := start
	for ; i < len(ops) && len(offs)/2 < c.maxOps; i++ {
		mark := len(buf)
		nb, _, encErr := encodeOp(buf, ops[i])
		if encErr != nil {
			if skipped == nil {
				skipped = map[int]bool{}
			}
			skipped[i] = true
			fail(i, fmt.Errorf("encode: %w", encErr))
			continue
		}
		size := unix.NLMSG_HDRLEN + len(nb) - mark
		if bytes+size > c.maxSend && len(offs) > 0 {
			buf = nb[:mark]
			break
		}
		buf, bytes = nb, bytes+size
		offs = append(offs, i, len(buf))
	}
	c.wbuf, c.seqIdx = buf, offs
	n := len(offs) / 2
	if n == 0 {
		return i, skipped, nil
	}

	msgs := c.msgs[:0]
	first := c.seq + 1
	prev := 0
	for k := 0; k < n; k++ {
		flags := netlink.Request
		if k == n-1 {
			flags |= netlink.Acknowledge
		}
		msgs = append(msgs, netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(c.family), Flags: flags, Sequence: c.nextSeq(), PID: c.pid},
			Data:   buf[prev:offs[2*k+1]],
		})
		prev = offs[2*k+1]
	}
	c.msgs = msgs
	last := msgs[n-1].Header.Sequence
	if _, err := c.nl.SendMessages(msgs); err != nil {
		c.broken = true
		return start, skipped, fmt.Errorf("send batch: %w", err)
	}

	reported := make([]bool, n)
	collect := func(b []byte) (bool, error) {
		return eachMessage(b, func(m nlMessage) (bool, error) {
			k := m.seq - first
			if m.typ != unix.NLMSG_ERROR || k >= uint32(n) {
				return false, nil // left over from an interrupted request
			}
			reported[k] = true
			if err := errorReport(m); err != nil {
				fail(offs[2*k], err)
			}
			return m.seq == last, nil
		})
	}
	for {
		b, err := c.recv()
		if err != nil {
			// The kernel handles the whole sendmsg before it returns, so
			// every report it did not drop is queued already: after a
			// deadline all of them, after ENOBUFS the ones that fitted.
			complete := false
			c.drain(func(b []byte) bool {
				done, perr := collect(b)
				complete = done && perr == nil
				return done || perr != nil
			})
			if complete && !errors.Is(err, unix.ENOBUFS) {
				return i, skipped, nil
			}
		}
		if err != nil {
			// ENOBUFS (a report was dropped), a deadline or a socket error:
			// what did not report is unknown.
			c.broken = true
			if errors.Is(err, unix.ENOBUFS) {
				c.maxOps = max(c.maxOps/2, 16)
			}
			for k := 0; k < n; k++ {
				if !reported[k] {
					fail(offs[2*k], fmt.Errorf("%w: %w", ErrOutcomeUnknown, err))
				}
			}
			return i, skipped, nil
		}
		done, perr := collect(b)
		if perr != nil {
			c.broken = true
			for k := 0; k < n; k++ {
				if !reported[k] {
					fail(offs[2*k], fmt.Errorf("%w: %w", ErrOutcomeUnknown, perr))
				}
			}
			return i, skipped, nil
		}
		if done {
			return i, skipped, nil
		}
	}
}

func sortOpErrors(errs []*OpError) []*OpError {
	slices.SortStableFunc(errs, func(a, b *OpError) int { return a.Index - b.Index })
	return errs
}

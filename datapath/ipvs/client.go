package ipvs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
)

// ErrNoIPVS means the kernel has no IPVS generic netlink family: the ip_vs
// module is not loaded and could not be autoloaded (or IPVS is absent).
var ErrNoIPVS = errors.New("kernel has no IPVS (generic netlink family \"IPVS\" not found; is ip_vs loaded?)")

// Options configure a Client.
type Options struct {
	// NetNS is an open network namespace file descriptor; 0 means the
	// caller's namespace. IPVS tables are per namespace.
	NetNS int
	// ReceiveBuffer and SendBuffer size the socket in bytes (defaults 16 MiB
	// and 4 MiB). Apply sizes its batches to them so that no error report
	// can be dropped. Buffers beyond the sysctl limits need CAP_NET_ADMIN.
	ReceiveBuffer int
	SendBuffer    int
	// MaxBatchOps caps the ops sent in one sendmsg (0: as many as the
	// buffers allow). Smaller batches bound how long one sendmsg holds the
	// kernel and how much a deadline leaves unknown.
	MaxBatchOps int
}

// Client programs and reads one network namespace's IPVS table over
// generic netlink. Its methods are safe for concurrent use; they run one
// at a time on one socket.
type Client struct {
	mu     sync.Mutex
	opts   Options
	dialer func(Options) (socket, sockInfo, error)
	sock   socket
	family uint16
	pid    uint32
	seq    uint32
	wbuf   []byte
	msgs   []netlink.Message
	seqIdx []int
	maxOps int // ops per sendmsg, so that every error report fits the receive buffer
	// opsCap is the limit learned from dropped reports (ENOBUFS); it
	// outlives the socket, which is re-dialed after a drop. 0: none yet.
	opsCap  int
	maxSend int // bytes per sendmsg
	broken  bool
}

// errReportSize bounds the receive-buffer charge (skb truesize) of one error
// report from the kernel with NETLINK_CAP_ACK set.
const errReportSize = 2048

// Open connects to IPVS in opts.NetNS. It fails with an error wrapping
// ErrNoIPVS when the kernel has no IPVS.
func Open(opts Options) (*Client, error) {
	return open(opts, dialNetlink)
}

// open is Open with the kernel behind a seam.
func open(opts Options, dialer func(Options) (socket, sockInfo, error)) (*Client, error) {
	if opts.ReceiveBuffer <= 0 {
		opts.ReceiveBuffer = 16 << 20
	}
	if opts.SendBuffer <= 0 {
		opts.SendBuffer = 4 << 20
	}
	c := &Client{opts: opts, dialer: dialer, seq: 1 << 16}
	if err := c.dial(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Client) dial() error {
	sock, info, err := c.dialer(c.opts)
	if err != nil {
		return err
	}
	c.sock, c.family, c.pid, c.broken = sock, info.family, info.pid, false
	c.maxOps = max(info.rcvBuf/errReportSize, 16)
	if c.opts.MaxBatchOps > 0 {
		c.maxOps = min(c.maxOps, c.opts.MaxBatchOps)
	}
	if c.opsCap > 0 {
		c.maxOps = min(c.maxOps, c.opsCap)
	}
	c.maxSend = max(info.sndBuf-4096, 64<<10)
	return nil
}

// redial replaces a socket left in an unknown state.
func (c *Client) redial() error {
	c.sock.Close()
	if err := c.dial(); err != nil {
		c.broken = true
		return err
	}
	return nil
}

// Close releases the socket. The kernel table is left as it is.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sock == nil {
		return nil
	}
	err := c.sock.Close()
	c.sock = nil
	return err
}

// begin takes the lock, re-dials a socket left in an unknown state, and
// binds the socket's deadline to ctx. The returned func undoes it all.
func (c *Client) begin(ctx context.Context) (func(), error) {
	c.mu.Lock()
	if c.sock == nil {
		c.mu.Unlock()
		return nil, errors.New("ipvs: client is closed")
	}
	if err := ctx.Err(); err != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("ipvs: %w", err)
	}
	if c.broken {
		if err := c.redial(); err != nil {
			c.mu.Unlock()
			return nil, err
		}
	}
	deadline, _ := ctx.Deadline()
	_ = c.sock.SetDeadline(deadline)
	// The socket of this call, not c.sock: the func may run after the call
	// ended, when Close or a re-dial has replaced c.sock.
	sock := c.sock
	stop := context.AfterFunc(ctx, func() { _ = sock.SetDeadline(time.Unix(1, 0)) })
	return func() {
		if !stop() && ctx.Err() != nil {
			// The deadline may be set behind our back after this point:
			// start from a fresh socket next time.
			c.broken = true
		} else {
			_ = c.sock.SetDeadline(time.Time{})
		}
		c.mu.Unlock()
	}, nil
}

func (c *Client) nextSeq() uint32 {
	c.seq++
	if c.seq == 0 {
		c.seq = 1
	}
	return c.seq
}

// request sends one generic netlink message and collects the replies that
// carry its sequence number, until the dump ends or the ack arrives.
func (c *Client) request(cmd uint8, flags netlink.HeaderFlags, attrs []byte, fn func(data []byte) error) error {
	seq := c.nextSeq()
	e := encoder{b: c.wbuf[:0]}
	e.genlHeader(cmd)
	e.b = append(e.b, attrs...)
	c.wbuf = e.b
	err := c.sock.SendMessages([]netlink.Message{{
		Header: netlink.Header{Type: netlink.HeaderType(c.family), Flags: netlink.Request | flags, Sequence: seq, PID: c.pid},
		Data:   e.b,
	}})
	if err != nil {
		c.broken = true
		return fmt.Errorf("send: %w", err)
	}
	dump := flags&netlink.Dump == netlink.Dump
	for {
		b, err := c.sock.Receive()
		if err != nil {
			c.broken = true
			return fmt.Errorf("receive: %w", err)
		}
		finished := false // the kernel sent its last message for this request
		var result error
		_, perr := eachMessage(b, func(m nlMessage) (bool, error) {
			if m.seq != seq {
				return false, nil // left over from an interrupted request
			}
			switch m.typ {
			case nlmsgError:
				finished, result = true, errorReport(m)
			case nlmsgDone:
				finished = true
				if len(m.data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.data)); code < 0 {
						result = syscall.Errno(-code)
					}
				}
			case c.family:
				if err := fn(m.data); err != nil {
					return true, err
				}
				finished = !dump && flags&netlink.Acknowledge == 0
			}
			return finished, nil
		})
		if perr != nil {
			// A dump may still be running in the kernel: start afresh.
			c.broken = c.broken || (dump && !finished)
			return perr
		}
		if finished {
			return result
		}
	}
}

// Services dumps every service with its counters.
func (c *Client) Services(ctx context.Context) ([]ServiceStatus, error) {
	end, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	return c.services(true)
}

func (c *Client) services(withStats bool) ([]ServiceStatus, error) {
	var out []ServiceStatus
	err := c.request(cmdGetService, netlink.Dump, nil, func(data []byte) error {
		s, err := decodeService(data, withStats)
		if err != nil {
			return err
		}
		out = append(out, s)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipvs: dump services: %w", err)
	}
	return out, nil
}

// Service reads one service, failing with ESRCH if it does not exist.
func (c *Client) Service(ctx context.Context, key ServiceKey) (ServiceStatus, error) {
	var out ServiceStatus
	if err := checkServiceKey(key); err != nil {
		return out, fmt.Errorf("ipvs: get service: %w", err)
	}
	end, err := c.begin(ctx)
	if err != nil {
		return out, err
	}
	defer end()
	e := encoder{}
	e.service(Service{Key: key}, false)
	found := false
	err = c.request(cmdGetService, netlink.Acknowledge, e.b, func(data []byte) error {
		s, err := decodeService(data, true)
		out, found = s, err == nil
		return err
	})
	if err == nil && !found {
		err = syscall.ESRCH
	}
	if err != nil {
		return out, fmt.Errorf("ipvs: get service %s: %w", key, err)
	}
	return out, nil
}

// Destinations dumps the destinations of one service with their counters.
func (c *Client) Destinations(ctx context.Context, key ServiceKey) ([]DestinationStatus, error) {
	if err := checkServiceKey(key); err != nil {
		return nil, fmt.Errorf("ipvs: dump destinations: %w", err)
	}
	end, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	var out []DestinationStatus
	err = c.destinations(key.Canonical(), true, func(d DestinationStatus) { out = append(out, d) })
	return out, err
}

func (c *Client) destinations(key ServiceKey, withStats bool, fn func(DestinationStatus)) error {
	e := encoder{}
	e.service(Service{Key: key}, false)
	err := c.request(cmdGetDest, netlink.Dump, e.b, func(data []byte) error {
		d, err := decodeDestination(data, key.Family, withStats)
		if err != nil {
			return err
		}
		fn(d)
		return nil
	})
	if err != nil {
		return fmt.Errorf("ipvs: dump destinations of %s: %w", key, err)
	}
	return nil
}

// Table reads the whole table without counters: every service and its
// destinations, in the form Diff takes. It costs one dump per service.
func (c *Client) Table(ctx context.Context) ([]VirtualServer, error) {
	end, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	svcs, err := c.services(false)
	if err != nil {
		return nil, err
	}
	out := make([]VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		vs := VirtualServer{Service: s.Service}
		err := c.destinations(s.Key, false, func(d DestinationStatus) {
			vs.Destinations = append(vs.Destinations, d.Destination)
		})
		if errors.Is(err, syscall.ESRCH) {
			continue // deleted between the two dumps
		}
		if err != nil {
			return nil, err
		}
		out = append(out, vs)
		// A large table is thousands of round trips: let other goroutines
		// run between them rather than only when the scheduler preempts
		// this one (on one CPU, every hand-off elsewhere would wait).
		runtime.Gosched()
	}
	return out, nil
}

// ServiceStats is a service and its destinations with their counters.
type ServiceStats struct {
	ServiceStatus
	Destinations []DestinationStatus
}

// Stats reads every service and destination with their counters in one
// call (one service dump, one destination dump per service), for metrics.
// keep chooses the services whose destinations are read. On an error it
// returns what it read before it.
func (c *Client) Stats(ctx context.Context, keep func(ServiceKey) bool) ([]ServiceStats, error) {
	var out []ServiceStats
	err := c.StatsEach(ctx, keep, func(ss ServiceStats) {
		ss.Destinations = slices.Clone(ss.Destinations)
		out = append(out, ss)
	})
	return out, err
}

// StatsEach is Stats handing each service to fn as it is read, so that a
// large table is never held whole; fn must not keep ss.Destinations (its
// array is reused for the next service).
func (c *Client) StatsEach(ctx context.Context, keep func(ServiceKey) bool, fn func(ss ServiceStats)) error {
	end, err := c.begin(ctx)
	if err != nil {
		return err
	}
	defer end()
	svcs, err := c.services(true)
	if err != nil {
		return err
	}
	var dests []DestinationStatus
	for _, s := range svcs {
		if !keep(s.Key) {
			continue
		}
		dests = dests[:0]
		err := c.destinations(s.Key, true, func(d DestinationStatus) { dests = append(dests, d) })
		if errors.Is(err, syscall.ESRCH) {
			continue // deleted between the two dumps
		}
		if err != nil {
			return err
		}
		fn(ServiceStats{ServiceStatus: s, Destinations: dests})
		runtime.Gosched() // as in Table
	}
	return nil
}

// Lookup reads one service with its destinations, without counters; nil
// when the kernel has no such service. A dump of the whole table is not
// atomic (the kernel resumes it by position, so a service deleted meanwhile
// can hide another one); Lookup is how to be sure of one service.
func (c *Client) Lookup(ctx context.Context, key ServiceKey) (*VirtualServer, error) {
	s, err := c.Service(ctx, key)
	if errors.Is(err, syscall.ESRCH) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	end, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	vs := &VirtualServer{Service: s.Service}
	err = c.destinations(key.Canonical(), false, func(d DestinationStatus) { vs.Destinations = append(vs.Destinations, d.Destination) })
	if errors.Is(err, syscall.ESRCH) {
		return nil, nil // deleted between the two requests
	}
	if err != nil {
		return nil, err
	}
	return vs, nil
}

// command runs one acknowledged request under ctx; fn sees its replies.
func (c *Client) command(ctx context.Context, what string, cmd uint8, attrs []byte, fn func(data []byte) error) error {
	end, err := c.begin(ctx)
	if err != nil {
		return err
	}
	defer end()
	if fn == nil {
		fn = func([]byte) error { return nil }
	}
	if err := c.request(cmd, netlink.Acknowledge, attrs, fn); err != nil {
		return fmt.Errorf("ipvs: %s: %w", what, err)
	}
	return nil
}

// Info reads the IPVS version and connection table size.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var in Info
	err := c.command(ctx, "get info", cmdGetInfo, nil, func(data []byte) (err error) {
		in, err = decodeInfo(data)
		return err
	})
	return in, err
}

// Timeouts reads the global TCP, TCP FIN and UDP timeouts.
func (c *Client) Timeouts(ctx context.Context) (Timeouts, error) {
	var t Timeouts
	err := c.command(ctx, "get timeouts", cmdGetConfig, nil, func(data []byte) (err error) {
		t, err = decodeTimeouts(data)
		return err
	})
	return t, err
}

// SetTimeouts sets the global timeouts; a zero field is left unchanged.
func (c *Client) SetTimeouts(ctx context.Context, t Timeouts) error {
	e := encoder{}
	e.u32(attrCmdTimeoutTCP, t.TCP)
	e.u32(attrCmdTimeoutTCPFin, t.TCPFin)
	e.u32(attrCmdTimeoutUDP, t.UDP)
	return c.command(ctx, "set timeouts", cmdSetConfig, e.b, nil)
}

// Flush deletes every service in the namespace, including ones this
// program did not create. For explicit operator use only.
func (c *Client) Flush(ctx context.Context) error {
	return c.command(ctx, "flush", cmdFlush, nil, nil)
}

// ZeroStats resets the counters of every service and destination.
func (c *Client) ZeroStats(ctx context.Context) error {
	return c.command(ctx, "zero counters", cmdZero, nil, nil)
}

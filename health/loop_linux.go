package health

import (
	"bytes"
	"container/heap"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The probe loop runs the checks that need only a connection and at most a
// status line (TCP, and HTTP without a body to match) on one goroutine:
// non-blocking sockets, one epoll set and a heap of due times, the way
// keepalived's checker works. A goroutine per check with the runtime's
// poller costs several wake-ups, timers and allocations per probe; at
// thousands of checks a second that is most of a health checker's CPU.

// The loop's sockets never block, so their calls go straight to the kernel
// (RawSyscall): the runtime's syscall bookkeeping would, for calls that are
// long only because the kernel does the work inline (a connect over veth
// runs the whole handshake), hand the loop's P to another thread and take
// it back, waking threads on every probe. The loop never blocks in a
// system call either: it waits in the runtime's own poller, where its epoll
// set is registered (an epoll set is readable while it has events) with a
// deadline for the next due time. A goroutine blocked in epoll_wait would
// keep the runtime's monitor thread retaking its P at every wait, which
// under emulation was a third of the checker's CPU.

func rawErr(errno unix.Errno) error {
	if errno != 0 {
		return errno
	}
	return nil
}

func rawConnect(fd int, sa unsafe.Pointer, saLen uintptr) error {
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(sa), saLen)
	return rawErr(e)
}

func rawClose(fd int) { _, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

var unspecified = unix.RawSockaddr{Family: unix.AF_UNSPEC}

// rawDisconnect ends a TCP socket's connection and keeps the socket for
// the next connect: connect(AF_UNSPEC) resets an established connection,
// abandons one still connecting and releases the local port.
func rawDisconnect(fd int) error {
	return rawConnect(fd, unsafe.Pointer(&unspecified), unsafe.Sizeof(unspecified))
}

func rawSoError(fd int) (int, error) {
	var v int32
	l := uint32(4)
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_ERROR, uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	return int(v), rawErr(e)
}

var resetLinger = unix.Linger{Onoff: 1, Linger: 0}

func rawSetResetOnClose(fd int) {
	_, _, _ = unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&resetLinger)), unsafe.Sizeof(resetLinger), 0)
}

func rawEpollCtl(epfd, op, fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	return rawErr(e)
}

func rawRead(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(n), rawErr(e)
}

func rawWrite(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(n), rawErr(e)
}

// rawSockaddr is a target in the kernel's layout, built once per check.
type rawSockaddr struct {
	family int
	in4    unix.RawSockaddrInet4
	in6    unix.RawSockaddrInet6
}

func newRawSockaddr(target netip.AddrPort) *rawSockaddr {
	r := &rawSockaddr{}
	port := target.Port()
	if a := target.Addr().Unmap(); a.Is4() {
		r.family = unix.AF_INET
		r.in4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		p := (*[2]byte)(unsafe.Pointer(&r.in4.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return r
	}
	a := target.Addr()
	r.family = unix.AF_INET6
	r.in6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16(), Scope_id: zoneID(a.Zone())}
	p := (*[2]byte)(unsafe.Pointer(&r.in6.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	return r
}

func (r *rawSockaddr) ptr() (unsafe.Pointer, uintptr) {
	if r.family == unix.AF_INET {
		return unsafe.Pointer(&r.in4), unsafe.Sizeof(r.in4)
	}
	return unsafe.Pointer(&r.in6), unsafe.Sizeof(r.in6)
}

// loopable says whether the probe loop runs c.
func loopable(c Check) bool {
	return c.Kind == TCP || c.Kind == HTTP && c.Spec().ExpectBody == ""
}

// Phases of a probe in flight.
const (
	phaseIdle = iota
	phaseConnecting
	phaseSending
	phaseReading
)

// loopCheck is one check's probing state; only the loop goroutine touches it.
type loopCheck struct {
	r       *runner
	addr    *rawSockaddr
	request []byte // HTTP: the request, built once
	index   int    // in the heap
	// next is when the loop must act: the next start while idle, the
	// probe's deadline while one is in flight.
	next  time.Time
	due   time.Time // scheduled start of the current or last probe
	start time.Time
	phase int
	fd    int  // the probe's socket; -1 when none is open
	held  bool // fd outlives the probe (counted in probeLoop.held)
	sent  int
	buf   [256]byte
	n     int
}

type loopHeap []*loopCheck

func (h loopHeap) Len() int           { return len(h) }
func (h loopHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h loopHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *loopHeap) Push(x any) {
	lc := x.(*loopCheck)
	lc.index = len(*h)
	*h = append(*h, lc)
}
func (h *loopHeap) Pop() any {
	old := *h
	lc := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	lc.index = -1
	return lc
}

// overdueInFlight says whether a probe in flight at or below heap index i
// is past its deadline.
func (h loopHeap) overdueInFlight(i int, now time.Time) bool {
	if i >= len(h) || h[i].next.After(now) {
		return false
	}
	return h[i].phase != phaseIdle || h.overdueInFlight(2*i+1, now) || h.overdueInFlight(2*i+2, now)
}

type loopCommand struct {
	add    *runner
	remove *runner
}

type probeLoop struct {
	m       *Monitor
	epfd    int
	epoll   *os.File        // epfd, registered with the runtime's poller
	waiting syscall.RawConn // of epoll
	wakeFD  int             // an eventfd: commands are waiting

	mu       sync.Mutex
	commands []loopCommand
	stopping bool

	// Owned by the loop goroutine.
	due    loopHeap
	byFD   map[int32]*loopCheck
	byRun  map[*runner]*loopCheck
	events []unix.EpollEvent
	held   int // sockets kept between probes
	// heldLimit: at most maxHeldSockets, and a quarter of the process's
	// open-files limit, so kept sockets never starve etcd or the API.
	heldLimit int
}

// maxHeldSockets bounds the sockets kept open between probes (each holds
// a few KiB of kernel memory and a descriptor); checks beyond it open a
// socket per probe.
const maxHeldSockets = 4096

// probeEvents is what the loop waits for on every probe socket,
// edge-triggered: a socket stays registered across the probes it serves,
// and epoll_wait reports the state at the time it returns, so a report
// queued for the socket's previous connection does not outlive it.
const probeEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// newProbeLoop starts a loop; its goroutine is counted in wg.
func newProbeLoop(m *Monitor, wg *sync.WaitGroup) (*probeLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	l := &probeLoop{m: m, epfd: epfd, wakeFD: wake,
		byFD: map[int32]*loopCheck{}, byRun: map[*runner]*loopCheck{}, events: make([]unix.EpollEvent, 256)}
	l.heldLimit = maxHeldSockets
	var nofile unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile) == nil {
		l.heldLimit = int(min(uint64(maxHeldSockets), nofile.Cur/4))
	}
	if err := l.registerEpoll(); err != nil {
		unix.Close(wake)
		return nil, err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.run()
	}()
	return l, nil
}

// registerEpoll hands the epoll set to the runtime's poller, so that the
// loop can wait for it with a deadline; it owns epfd from then on.
func (l *probeLoop) registerEpoll() error {
	if err := unix.SetNonblock(l.epfd, true); err != nil {
		unix.Close(l.epfd)
		return fmt.Errorf("epoll set non-blocking: %w", err)
	}
	// Non-blocking, so os.NewFile registers it with the poller.
	l.epoll = os.NewFile(uintptr(l.epfd), "health-probe-epoll")
	raw, err := l.epoll.SyscallConn()
	if err == nil {
		// Only a descriptor in the poller takes deadlines.
		err = l.epoll.SetReadDeadline(time.Time{})
	}
	if err != nil {
		l.epoll.Close()
		return fmt.Errorf("epoll set in the runtime's poller: %w", err)
	}
	l.waiting = raw
	return nil
}

// send queues a command for the loop; it never blocks, so the monitor may
// call it holding its lock while the loop waits for that lock to record.
func (l *probeLoop) send(c loopCommand) {
	l.mu.Lock()
	l.commands = append(l.commands, c)
	l.mu.Unlock()
	l.wake()
}

func (l *probeLoop) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(l.wakeFD, one[:]) // EAGAIN only when already signalled
}

// shutdown tells the loop to close every probe in flight and end; it does
// not wait (the loop may be waiting for the monitor's lock to record).
func (l *probeLoop) shutdown() {
	l.mu.Lock()
	l.stopping = true
	l.mu.Unlock()
	l.wake()
}

func (l *probeLoop) run() {
	defer func() {
		for _, lc := range l.byRun {
			l.closeSocket(lc)
		}
		l.epoll.Close()
		unix.Close(l.wakeFD)
	}()
	for {
		var until time.Time
		if len(l.due) > 0 {
			until = l.due[0].next
		}
		n, err := l.poll(until)
		now := time.Now()
		// A full batch leaves events queued: take them all before judging
		// deadlines.
		for ; err == nil; n, err = l.pollNow() {
			if !l.handle(l.events[:max(n, 0)], now) {
				return
			}
			if n < len(l.events) {
				break
			}
		}
		if err != nil {
			l.m.log.Error("health probe loop: epoll_wait failed; probes stop", "error", err)
			return
		}
		l.runDue(now)
	}
}

// handle moves on the probes whose sockets are in events and applies
// commands; false means stop.
func (l *probeLoop) handle(events []unix.EpollEvent, now time.Time) bool {
	for _, ev := range events {
		if ev.Fd == int32(l.wakeFD) {
			if !l.takeCommands(now) {
				return false
			}
			continue
		}
		if lc, ok := l.byFD[ev.Fd]; ok {
			l.advance(lc, now, ev.Events)
		}
	}
	return true
}

// maxStartSlack bounds how early a probe may start: the loop wakes for the
// first start due and takes the others due within the slack with it, as
// timer slack does, so that at hundreds of starts a second a wake-up
// serves several. Deadlines are kept exactly.
const maxStartSlack = 5 * time.Millisecond

// runDue starts the probes due by now (or within their slack) and ends
// those whose deadline has passed.
func (l *probeLoop) runDue(now time.Time) {
	for len(l.due) > 0 {
		lc := l.due[0]
		c := lc.r.check
		switch {
		case lc.phase != phaseIdle && !lc.next.After(now):
			l.finish(lc, now, l.timeoutError(lc))
		case lc.phase == phaseIdle && !lc.next.After(now.Add(min(maxStartSlack, c.Interval/16))):
			l.startProbe(lc, now)
		default:
			return
		}
	}
}

// poll takes the events queued on the loop's sockets, waiting for some
// until the deadline (zero: no deadline) if there are none.
func (l *probeLoop) poll(until time.Time) (int, error) {
	n, err := l.pollNow()
	if err != nil || n > 0 || !until.IsZero() && !until.After(time.Now()) {
		return n, err
	}
	if err := l.epoll.SetReadDeadline(until); err != nil {
		return 0, err
	}
	var pollErr error
	err = l.waiting.Read(func(uintptr) bool {
		n, pollErr = l.pollNow()
		return n > 0 || pollErr != nil
	})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) && l.due.overdueInFlight(0, time.Now()):
		// The deadline and the answer may both have come while the
		// process did not run (the machine stalled); the runtime reports
		// whichever it saw first. An answer queued before the loop could
		// take it is not a timeout.
		return l.pollNow()
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, nil
	case err != nil:
		return 0, err
	}
	return n, pollErr
}

// pollNow takes the events already queued, without blocking.
func (l *probeLoop) pollNow() (int, error) {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), 0, 0, 0)
		if e != unix.EINTR {
			return int(n), rawErr(e)
		}
	}
}

// takeCommands applies queued adds and removes; false means stop.
func (l *probeLoop) takeCommands(now time.Time) bool {
	var buf [8]byte
	_, _ = unix.Read(l.wakeFD, buf[:])
	l.mu.Lock()
	cmds, stopping := l.commands, l.stopping
	l.commands = nil
	l.mu.Unlock()
	if stopping {
		return false
	}
	for _, c := range cmds {
		if r := c.add; r != nil {
			lc := &loopCheck{r: r, fd: -1, addr: newRawSockaddr(r.check.Target)}
			if r.check.Kind == HTTP {
				req, err := httpRequest(r.check)
				if err != nil {
					l.m.log.Warn("health check cannot be sent", "check", r.check.String(), "error", err)
				}
				lc.request = req
			}
			// Spread the starts over the interval.
			lc.next = now.Add(rand.N(r.check.Interval))
			l.byRun[r] = lc
			heap.Push(&l.due, lc)
		}
		if r := c.remove; r != nil {
			if lc, ok := l.byRun[r]; ok {
				l.closeSocket(lc)
				heap.Remove(&l.due, lc.index)
				delete(l.byRun, r)
			}
		}
	}
	return true
}

func (l *probeLoop) startProbe(lc *loopCheck, now time.Time) {
	c := lc.r.check
	lc.due, lc.start = lc.next, now
	lc.next = now.Add(c.Timeout)
	heap.Fix(&l.due, lc.index)
	if c.Kind == HTTP && lc.request == nil {
		l.finish(lc, now, fail(ReasonOther, "method, path or host has spaces or control characters"))
		return
	}
	lc.phase, lc.sent, lc.n = phaseConnecting, 0, 0
	if lc.fd < 0 {
		if err := l.openSocket(lc); err != nil {
			l.finish(lc, now, err)
			return
		}
	}
	sa, saLen := lc.addr.ptr()
	if err := rawConnect(lc.fd, sa, saLen); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		l.finish(lc, now, l.opError("dial", lc, os.NewSyscallError("connect", err)))
	}
}

// openSocket gives lc a socket registered with the loop's epoll set. A
// plain check keeps it for its later probes (while fewer than
// maxHeldSockets are kept); a check through the VIP opens one per probe,
// so that its source address follows the routes.
func (l *probeLoop) openSocket(lc *loopCheck) error {
	c := lc.r.check
	fd, err := unix.Socket(lc.addr.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	lc.fd = fd
	l.byFD[int32(fd)] = lc
	if err := pathSocket(fd, c); err != nil {
		return l.opError("dial", lc, err)
	}
	if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, probeEvents); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	if c.Mark == 0 && l.held < l.heldLimit {
		lc.held = true
		l.held++
	}
	return nil
}

// advance moves a probe on after epoll reported its socket.
func (l *probeLoop) advance(lc *loopCheck, now time.Time, events uint32) {
	switch lc.phase {
	case phaseConnecting:
		if done, err := l.connected(lc, events); !done {
			return
		} else if err != nil || lc.r.check.Kind == TCP {
			l.finish(lc, now, err)
			return
		}
		lc.phase = phaseSending
		fallthrough
	case phaseSending:
		n, err := rawWrite(lc.fd, lc.request[lc.sent:])
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return
			}
			l.finish(lc, now, l.opError("write", lc, os.NewSyscallError("write", err)))
			return
		}
		if lc.sent += n; lc.sent < len(lc.request) {
			return
		}
		lc.phase = phaseReading
	case phaseReading:
		n, err := rawRead(lc.fd, lc.buf[lc.n:])
		switch {
		case errors.Is(err, unix.EAGAIN):
			return
		case err != nil:
			l.finish(lc, now, l.opError("read", lc, os.NewSyscallError("read", err)))
			return
		}
		lc.n += n
		if i := bytes.IndexByte(lc.buf[:lc.n], '\n'); i >= 0 {
			code, err := parseStatusLine(lc.buf[:i])
			if err == nil && !statusExpected(lc.r.check.Spec().ExpectStatus, code) {
				err = fail(ReasonStatus, "status %d, want %s", code, orDefault(lc.r.check.Spec().ExpectStatus, "200-399"))
			}
			l.finish(lc, now, err)
			return
		}
		switch {
		case n == 0:
			l.finish(lc, now, l.opError("read", lc, io.ErrUnexpectedEOF))
		case lc.n == len(lc.buf):
			l.finish(lc, now, fail(ReasonOther, "status line longer than %d bytes", len(lc.buf)))
		}
	}
}

func (l *probeLoop) opError(op string, lc *loopCheck, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Addr: net.TCPAddrFromAddrPort(lc.r.check.Target), Err: err}
}

func (l *probeLoop) timeoutError(lc *loopCheck) error {
	op := "dial"
	if lc.phase != phaseConnecting {
		op = "read"
	}
	return l.opError(op, lc, os.ErrDeadlineExceeded)
}

// finish ends the probe in flight, records its result and schedules the
// next one an interval after this one was due (start to start).
func (l *probeLoop) finish(lc *loopCheck, now time.Time, err error) {
	l.closeProbe(lc)
	c := lc.r.check
	if err != nil {
		err = classify(err)
	}
	l.m.finished(lc.r, now.Sub(lc.start), err)
	// The next start is an interval after this one was due; when that has
	// passed (a probe as long as the interval) it starts at once, still on
	// the same schedule. Only after falling a whole interval behind (a
	// stalled machine) are the missed starts skipped.
	lc.next = lc.due.Add(c.Interval)
	if behind := now.Sub(lc.next); behind > c.Interval {
		lc.next = lc.next.Add(behind / c.Interval * c.Interval)
	}
	heap.Fix(&l.due, lc.index)
}

// connected says whether a connecting probe's socket is done connecting,
// and with what error. Writable without an error or hang-up is connected
// (no system call); otherwise the socket's error says why.
func (l *probeLoop) connected(lc *loopCheck, events uint32) (bool, error) {
	if events&(unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return events&unix.EPOLLOUT != 0, nil
	}
	soErr, err := rawSoError(lc.fd)
	switch e := unix.Errno(soErr); {
	case err != nil:
		return true, os.NewSyscallError("getsockopt", err)
	case e == unix.EINPROGRESS || e == unix.EALREADY || e == unix.EINTR:
		return false, nil
	case e != 0:
		return true, l.opError("dial", lc, os.NewSyscallError("connect", e))
	case events&unix.EPOLLHUP != 0:
		return true, l.opError("dial", lc, os.NewSyscallError("connect", unix.ECONNRESET))
	}
	return events&unix.EPOLLOUT != 0, nil
}

// closeProbe ends the probe in flight. A held socket is disconnected for
// the next probe (a reset, as closeSocket sends); any other is closed.
func (l *probeLoop) closeProbe(lc *loopCheck) {
	if lc.fd >= 0 && lc.held && lc.phase != phaseIdle && rawDisconnect(lc.fd) != nil {
		l.closeSocket(lc)
	}
	if !lc.held {
		l.closeSocket(lc)
	}
	lc.phase = phaseIdle
}

// closeSocket closes lc's socket, with a reset if a connection is open (see
// probeConn.reset).
func (l *probeLoop) closeSocket(lc *loopCheck) {
	if lc.fd < 0 {
		return
	}
	if lc.phase != phaseIdle {
		rawSetResetOnClose(lc.fd)
	}
	delete(l.byFD, int32(lc.fd))
	rawClose(lc.fd) // also leaves the epoll set
	if lc.held {
		lc.held = false
		l.held--
	}
	lc.fd, lc.phase = -1, phaseIdle
}

package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/rpc"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Supervised is a Speaker in a child process of its own. GoBGP parses
// whatever a router sends in goroutines merlin cannot guard, and Go cannot
// recover another goroutine's panic: a GoBGP bug reachable from the wire
// would end the whole of merlin (API, health checks, IPVS reconciliation).
// In a child it ends only the speaker: the supervisor logs it, counts it,
// starts a new one (with backoff) and hands it the route set again. The
// routers see the sessions reset (with graceful restart they keep the
// routes meanwhile); the rest of the node never notices.
type Supervised struct {
	cfg Config
	log *slog.Logger
	exe string

	changed  chan struct{}
	restarts atomic.Uint64
	// reconfigured: SetConfig has a configuration for the running speaker
	reconfigured chan struct{}

	mu        sync.Mutex
	childCfg  Config      // what the running speaker has
	configErr string      // NoteConfigError's
	client    *rpc.Client // nil while no speaker runs
	pid       int
	want      map[netip.Prefix]Route
	wantSet   bool
	wantGen   uint64 // Set and Update calls so far
	handedGen uint64 // the wantGen the running speaker was given
	// childStale: a call to the running speaker failed, so it may hold
	// other routes than want; the next call gives it the whole set.
	childStale bool
	downWhy    string // why no speaker runs
	refusedBy  uint64 // refusals counted by speakers that ended
	refusedIn  uint64 // the running speaker's count, last read
}

// Backoff between speaker restarts; reset once one ran a minute.
const (
	restartMin    = time.Second
	restartMax    = 30 * time.Second
	stableRunTime = time.Minute
	callTimeout   = 10 * time.Second
)

// NewSupervised checks the configuration; it starts nothing. exe is the
// program to run as the speaker (empty: this one), which must call
// RunChildIfAsked first thing. A configuration without a local AS is BGP
// off: no speaker runs until SetConfig gives one.
func NewSupervised(cfg Config, log *slog.Logger, exe string) (*Supervised, error) {
	if err := cfg.validateIfOn(); err != nil {
		return nil, err
	}
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("bgp speaker: this program's path: %w", err)
		}
	}
	return &Supervised{cfg: cfg, log: log, exe: exe, changed: make(chan struct{}, 1), reconfigured: make(chan struct{}, 1),
		downWhy: stateStarting}, nil
}

// Run keeps a speaker running until ctx ends, then stops it as
// Speaker.Run does (a Cease to every peer unless graceful restart is
// configured). A speaker that cannot start at all is an error.
func (s *Supervised) Run(ctx context.Context) error {
	backoff := restartMin
	for first := true; ; first = false {
		if !s.waitOn(ctx) {
			return nil
		}
		started := time.Now()
		err := s.runChild(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errReconfigured) {
			continue // at once: nothing failed
		}
		if first && time.Since(started) < time.Second && errors.Is(err, errStart) {
			return err
		}
		if time.Since(started) > stableRunTime {
			backoff = restartMin
		}
		s.restarts.Add(1)
		s.log.Error("bgp speaker ended; starting a new one", "error", err, "in", backoff, "restarts", s.restarts.Load())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, restartMax)
	}
}

var (
	errStart        = errors.New("bgp speaker did not start")
	errReconfigured = errors.New("bgp speaker stopped for a new global configuration")
)

// stateStarting: no speaker has run yet.
const stateStarting = "starting"

// runChild runs one speaker until it ends or ctx does.
func (s *Supervised) runChild(ctx context.Context) error {
	conn, pid, exited, err := s.spawn()
	if err != nil {
		return fmt.Errorf("%w: %w", errStart, err)
	}
	client := rpc.NewClient(conn)
	defer client.Close()
	if err := s.start(ctx, client); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		return fmt.Errorf("%w: %w (%v)", errStart, err, <-exited)
	}
	s.attach(ctx, client, pid)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		s.watchChanges(client)
	}()
	defer func() { <-watchDone }()
	for {
		if s.globalChanged() {
			s.stopChild(client, pid, exited, "stopped for a new global configuration")
			return errReconfigured
		}
		s.updatePeers(ctx, client)
		select {
		case <-ctx.Done():
			s.stopChild(client, pid, exited, "stopped")
			return nil
		case <-s.reconfigured:
		case err := <-exited:
			s.detach(fmt.Sprintf("the speaker process ended (%v); restarting", err), client)
			return fmt.Errorf("speaker process: %w", err)
		}
	}
}

// stopChild stops the speaker as Speaker.Run does when its context ends.
func (s *Supervised) stopChild(client *rpc.Client, pid int, exited <-chan error, why string) {
	s.detach(why, client)
	s.call(context.Background(), client, "Stop", struct{}{}, &struct{}{})
	client.Close() // the speaker exits when its end closes
	select {
	case <-exited:
	case <-time.After(callTimeout):
		syscall.Kill(pid, syscall.SIGKILL)
		<-exited
	}
}

// spawn starts the child with its end of a socket pair as fd 3 and its
// stderr relayed to the log. The child dies with the thread that forked
// it (Pdeathsig), so that thread stays locked until the child ends.
func (s *Supervised) spawn() (net.Conn, int, <-chan error, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("socket pair: %w", err)
	}
	syscall.CloseOnExec(fds[0])
	syscall.CloseOnExec(fds[1])
	mine, theirs := os.NewFile(uintptr(fds[0]), "bgp-supervisor"), os.NewFile(uintptr(fds[1]), "bgp-speaker")
	defer mine.Close()
	logR, logW, err := os.Pipe()
	if err != nil {
		theirs.Close()
		return nil, 0, nil, err
	}
	cmd := exec.Command(s.exe)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = logW
	cmd.SysProcAttr = childAttrs()
	startErr, exited := make(chan error, 1), make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		theirs.Close()
		logW.Close()
		startErr <- err
		if err == nil {
			exited <- cmd.Wait()
		}
	}()
	if err := <-startErr; err != nil {
		logR.Close()
		return nil, 0, nil, fmt.Errorf("start %s: %w", s.exe, err)
	}
	go relayLogs(s.log, logR)
	conn, err := net.FileConn(mine)
	if err != nil {
		cmd.Process.Kill()
		<-exited
		return nil, 0, nil, err
	}
	return conn, cmd.Process.Pid, exited, nil
}

// start configures the new speaker and gives it the routes wanted now.
func (s *Supervised) start(ctx context.Context, c *rpc.Client) error {
	level := slog.LevelInfo
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		if s.log.Enabled(ctx, l) {
			level = l
			break
		}
	}
	s.mu.Lock()
	s.childCfg = s.cfg
	cfg := s.cfg
	s.mu.Unlock()
	if err := s.call(ctx, c, "Start", ChildConfig{Config: cfg, LogLevel: level}, &struct{}{}); err != nil {
		return err
	}
	s.handOver(ctx, c)
	return nil
}

// handOver gives the speaker the routes wanted now, unless it has them.
func (s *Supervised) handOver(ctx context.Context, c *rpc.Client) {
	s.mu.Lock()
	want, wantSet, gen := s.wantList(), s.wantSet, s.wantGen
	s.mu.Unlock()
	if !wantSet {
		return
	}
	err := s.call(ctx, c, "Set", want, &struct{}{})
	if err != nil {
		s.log.Warn("bgp: announcing to the new speaker", "error", err)
	}
	s.mu.Lock()
	s.handedGen, s.childStale = gen, err != nil
	s.mu.Unlock()
}

// attach makes c the running speaker, and hands it the routes again if a
// Set came while it started: that Set saw no speaker and only kept them
// (seen: a drained node restarted, its undrain arrived while the new
// speaker started, which kept the drain's GRACEFUL_SHUTDOWN routes).
func (s *Supervised) attach(ctx context.Context, c *rpc.Client, pid int) {
	s.mu.Lock()
	s.client, s.pid, s.downWhy = c, pid, ""
	missed := s.wantGen != s.handedGen
	s.mu.Unlock()
	if missed {
		s.handOver(ctx, c)
	}
	s.poke()
}

func (s *Supervised) detach(why string, c *rpc.Client) {
	if n, err := s.refused(context.Background(), c, time.Second); err == nil {
		s.noteRefused(c, n)
	}
	s.mu.Lock()
	s.refusedBy, s.refusedIn = s.refusedBy+s.refusedIn, 0
	s.client, s.pid, s.downWhy = nil, 0, why
	s.mu.Unlock()
	s.poke()
}

// noteRefused keeps the running speaker's refusal count (it only grows).
func (s *Supervised) noteRefused(c *rpc.Client, n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == c && n > s.refusedIn {
		s.refusedIn = n
	}
}

// watchChanges passes the speaker's session changes on until it ends.
func (s *Supervised) watchChanges(c *rpc.Client) {
	for c.Call("Speaker.WaitChange", struct{}{}, &struct{}{}) == nil {
		s.poke()
	}
}

func (s *Supervised) poke() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// call is an RPC bounded by ctx and callTimeout.
func (s *Supervised) call(ctx context.Context, c *rpc.Client, method string, args, reply any) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	call := c.Go("Speaker."+method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		return call.Error
	case <-ctx.Done():
		return fmt.Errorf("bgp speaker %s: %w", method, ctx.Err())
	}
}

func (s *Supervised) current() (*rpc.Client, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client, s.downWhy
}

// Set makes the announced routes exactly routes. Before the first speaker
// runs they are only kept; while a new one is awaited after a crash they
// are kept for it, and the error says so.
func (s *Supervised) Set(ctx context.Context, routes []Route) error {
	for _, r := range routes {
		if err := r.validate(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.want, s.wantSet = make(map[netip.Prefix]Route, len(routes)), true
	for _, r := range routes {
		s.want[r.Prefix] = r
	}
	s.wantGen++
	s.mu.Unlock()
	return s.give(ctx, "Set", routes)
}

// give tells the running speaker, if any, what changed of the routes
// wanted (Set or Update).
func (s *Supervised) give(ctx context.Context, method string, args any) error {
	c, err := s.speakerFor()
	if c == nil {
		return err
	}
	return s.tell(ctx, c, method, args)
}

// speakerFor is the running speaker to give routes to; without one the
// routes are kept, and the error says so unless none is to run yet.
func (s *Supervised) speakerFor() (*rpc.Client, error) {
	s.mu.Lock()
	on := s.cfg.on()
	s.mu.Unlock()
	c, why := s.current()
	switch {
	case c == nil && (why == stateStarting || !on):
		return nil, nil // handed to the speaker when it starts, as Speaker.Set before Run
	case c == nil:
		return nil, fmt.Errorf("bgp speaker not running (%s): routes kept for when it is", why)
	}
	return c, nil
}

// tell gives the running speaker routes (Set) or changes (Update); after
// a failed call the next one hands it the whole set.
func (s *Supervised) tell(ctx context.Context, c *rpc.Client, method string, args any) error {
	s.mu.Lock()
	if s.childStale {
		method, args = "Set", s.wantList()
	}
	s.mu.Unlock()
	err := s.call(ctx, c, method, args, &struct{}{})
	s.mu.Lock()
	if method == "Set" || err != nil {
		s.childStale = err != nil
	}
	s.mu.Unlock()
	return err
}

// wantList is the routes wanted, sorted by prefix; under mu.
func (s *Supervised) wantList() []Route {
	out := make([]Route, 0, len(s.want))
	for _, r := range s.want {
		out = append(out, r)
	}
	return sortedByPrefix(out)
}

// Update applies changes to the announced routes (Speaker.Update): the
// speaker is sent only the changes, unless an earlier call to it failed.
func (s *Supervised) Update(ctx context.Context, changes Changes) error {
	ch, err := changes.checked(nil) // the speaker checks the families its peers carry
	if err != nil {
		return err
	}
	s.mu.Lock()
	if !s.wantSet {
		s.mu.Unlock()
		return errors.New("bgp: routes updated before they were set")
	}
	for _, p := range ch.Withdraw {
		delete(s.want, p)
	}
	for _, r := range ch.Announce {
		s.want[r.Prefix] = r
	}
	s.wantGen++
	s.mu.Unlock()
	return s.give(ctx, "Update", ch)
}

// refused asks the running speaker for its refusal count.
func (s *Supervised) refused(ctx context.Context, c *rpc.Client, timeout time.Duration) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var n uint64
	err := s.call(ctx, c, "Refused", struct{}{}, &n)
	return n, err
}

// Peers reports every configured peer, in configuration order; while no
// speaker runs each is idle with the reason as its last error.
func (s *Supervised) Peers(ctx context.Context) ([]PeerStatus, error) {
	c, why := s.current()
	if c != nil {
		var peers []PeerStatus
		err := s.call(ctx, c, "Peers", struct{}{}, &peers)
		if err == nil {
			return peers, nil
		}
		why = err.Error()
	}
	s.mu.Lock()
	peers := s.cfg.Peers
	s.mu.Unlock()
	out := make([]PeerStatus, 0, len(peers))
	for _, p := range peers {
		st := PeerStatus{Address: p.Address, AS: p.AS, State: "idle", LastError: "bgp speaker: " + why, Source: p.Source}
		if p.BFD != nil {
			st.BFD = &BFDStatus{State: "admin-down", RemoteState: "down"}
		}
		out = append(out, st)
	}
	return out, nil
}

// Announced is the set of routes the speaker holds, sorted; none while
// no speaker runs.
func (s *Supervised) Announced() []Route {
	c, _ := s.current()
	if c == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var routes []Route
	if err := s.call(ctx, c, "Announced", struct{}{}, &routes); err != nil {
		return nil
	}
	return routes
}

// RefusedConnections counts connections from addresses that are no peer,
// over every speaker this supervisor ran.
func (s *Supervised) RefusedConnections() uint64 {
	if c, _ := s.current(); c != nil {
		if n, err := s.refused(context.Background(), c, 2*time.Second); err == nil {
			s.noteRefused(c, n)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refusedBy + s.refusedIn
}

// Table lists the speaker's own routing table.
func (s *Supervised) Table(ctx context.Context) ([]netip.Prefix, error) {
	c, why := s.current()
	if c == nil {
		return nil, errors.New("bgp speaker not running: " + why)
	}
	var out []netip.Prefix
	err := s.call(ctx, c, "Table", struct{}{}, &out)
	return out, err
}

// Changes is signalled (coalesced) when a session goes up or down, or
// the speaker process ends or starts.
func (s *Supervised) Changes() <-chan struct{} { return s.changed }

// Restarts counts speakers that ended without being asked to.
func (s *Supervised) Restarts() uint64 { return s.restarts.Load() }

// PID is the running speaker's process id, 0 while none runs.
func (s *Supervised) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

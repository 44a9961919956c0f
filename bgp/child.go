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
	"os/signal"
	"sync"
	"syscall"
)

// childEnv marks a process started by Supervised as its speaker. The
// speaker's end of the socket pair is file descriptor 3.
const childEnv = "MERLIN_BGP_SPEAKER_CHILD"

// RunChildIfAsked runs the speaker and exits when this process was
// started as a Supervised speaker; otherwise it returns at once. Call it
// first thing in main (and in TestMain of tests that start a Supervised).
func RunChildIfAsked() {
	if os.Getenv(childEnv) != "1" {
		return
	}
	// Stopped by its supervisor (or killed with it: Pdeathsig), never by a
	// signal meant for merlin: a SIGTERM to the whole unit must leave the
	// supervisor to send each peer its Cease.
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	conn, err := net.FileConn(os.NewFile(3, "bgp-speaker"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bgp speaker: the supervisor's socket:", err)
		os.Exit(2)
	}
	srv := rpc.NewServer()
	c := &childServer{done: make(chan struct{})}
	if err := srv.RegisterName("Speaker", c); err != nil {
		fmt.Fprintln(os.Stderr, "bgp speaker:", err)
		os.Exit(2)
	}
	// The supervisor gone (its end closed) ends the speaker as the end of
	// an in-process speaker would: sessions close with the process.
	srv.ServeConn(conn)
	os.Exit(0)
}

// ChildConfig is what the supervisor hands its speaker.
type ChildConfig struct {
	Config   Config
	LogLevel slog.Level
}

// childServer is the speaker's side: the RPC methods the supervisor calls.
type childServer struct {
	mu      sync.Mutex
	speaker *Speaker
	cancel  context.CancelFunc
	done    chan struct{} // Run returned
}

var errNotStarted = errors.New("bgp speaker: not started")

// Start makes and runs the speaker; its logs go to stderr as JSON.
func (c *childServer) Start(cc ChildConfig, _ *struct{}) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.speaker != nil {
		return errors.New("bgp speaker: already started")
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cc.LogLevel}))
	s, err := New(cc.Config, log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.speaker, c.cancel = s, cancel
	go func() {
		defer close(c.done)
		if err := s.Run(ctx); err != nil {
			log.Error("bgp speaker stopped", "error", err)
			os.Exit(1)
		}
	}()
	return nil
}

func (c *childServer) get() (*Speaker, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.speaker == nil {
		return nil, errNotStarted
	}
	return c.speaker, nil
}

// Set announces exactly routes.
func (c *childServer) Set(routes []Route, _ *struct{}) error {
	s, err := c.get()
	if err != nil {
		return err
	}
	return s.Set(context.Background(), routes)
}

// Update applies changes to the announced routes.
func (c *childServer) Update(ch Changes, _ *struct{}) error {
	s, err := c.get()
	if err != nil {
		return err
	}
	return s.Update(context.Background(), ch)
}

// SetPeers changes the peers live (Speaker.SetPeers).
func (c *childServer) SetPeers(peers []Peer, _ *struct{}) error {
	s, err := c.get()
	if err != nil {
		return err
	}
	return s.SetPeers(context.Background(), peers)
}

// Peers reports the sessions.
func (c *childServer) Peers(_ struct{}, out *[]PeerStatus) error {
	s, err := c.get()
	if err != nil {
		return err
	}
	*out, err = s.Peers(context.Background())
	return err
}

// Announced lists the routes the speaker holds.
func (c *childServer) Announced(_ struct{}, out *[]Route) error {
	s, err := c.get()
	if err != nil {
		return err
	}
	*out = s.Announced()
	return nil
}

// Refused counts connections from addresses that are no peer.
func (c *childServer) Refused(_ struct{}, out *uint64) error {
	s, err := c.get()
	if err != nil {
		return err
	}
	*out = s.RefusedConnections()
	return nil
}

// Table lists the speaker's own routing table.
func (c *childServer) Table(_ struct{}, out *[]netip.Prefix) error {
	s, err := c.get()
	if err != nil {
		return err
	}
	*out, err = s.Table(context.Background())
	return err
}

// WaitChange returns when a session changes state (a long poll).
func (c *childServer) WaitChange(_ struct{}, _ *struct{}) error {
	s, err := c.get()
	if err != nil {
		return err
	}
	select {
	case <-s.Changes():
		return nil
	case <-c.done:
		return errors.New("bgp speaker stopped")
	}
}

// Stop ends the speaker as Speaker.Run does when its context ends.
func (c *childServer) Stop(_ struct{}, _ *struct{}) error {
	c.mu.Lock()
	cancel := c.cancel
	c.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-c.done
	return nil
}

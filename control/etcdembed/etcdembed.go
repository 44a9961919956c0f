// Package etcdembed runs a single-node etcd server inside the merlin
// process: the control plane of a merlin started without store endpoints.
// It is its own package so that clients (meradm) do not link etcd's
// server. No privileges needed; it writes to its data directory.
package etcdembed

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Config says where the server keeps its data and listens.
type Config struct {
	DataDir   string // etcd's own data lives in DataDir/etcd
	ClientURL string // e.g. http://127.0.0.1:2379
	PeerURL   string // e.g. http://127.0.0.1:2380; only this node uses it
	Name      string // member name; "merlin" when empty
}

// Server is a single-node etcd server running in this process: the
// default control plane of a merlin started without store endpoints.
type Server struct {
	etcd      *embed.Etcd
	ClientURL string
}

// Start starts the server and waits until it serves clients.
func Start(ctx context.Context, c Config) (*Server, error) {
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd client URL %q: %w", c.ClientURL, err)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd peer URL %q: %w", c.PeerURL, err)
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	if cfg.Name == "" {
		cfg.Name = "merlin"
	}
	cfg.Dir = c.DataDir + "/etcd"
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	// Keep a day of history so watchers resuming after a pause rarely
	// meet a compacted revision.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "24h"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Server{etcd: e, ClientURL: cu.String()}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready: %w", ctx.Err())
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after 60s")
	}
}

// Err reports a fatal error of the running server.
func (e *Server) Err() <-chan error { return e.etcd.Err() }

// Close stops the server.
func (e *Server) Close() { e.etcd.Close() }

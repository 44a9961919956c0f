package control

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// EmbeddedEtcdConfig is where a single-node etcd inside merlin listens.
type EmbeddedEtcdConfig struct {
	DataDir   string // etcd's own data lives in DataDir/etcd
	ClientURL string // e.g. http://127.0.0.1:2379
	PeerURL   string // e.g. http://127.0.0.1:2380; only this node uses it
	Name      string // member name; "merlin" when empty
}

// EmbeddedEtcd is a single-node etcd server running in this process: the
// default control plane of a merlin started without store endpoints.
type EmbeddedEtcd struct {
	etcd      *embed.Etcd
	ClientURL string
}

// StartEmbeddedEtcd starts the server and waits until it serves clients.
func StartEmbeddedEtcd(ctx context.Context, c EmbeddedEtcdConfig) (*EmbeddedEtcd, error) {
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
		return &EmbeddedEtcd{etcd: e, ClientURL: cu.String()}, nil
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
func (e *EmbeddedEtcd) Err() <-chan error { return e.etcd.Err() }

// Close stops the server.
func (e *EmbeddedEtcd) Close() { e.etcd.Close() }

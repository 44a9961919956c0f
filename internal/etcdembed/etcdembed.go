// Package etcdembed runs a single-node etcd server inside the merlin
// process: the control plane of a merlin started without store endpoints.
// It is its own package so that clients (meradm) do not link etcd's
// server. No privileges needed; it writes to its data directory.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/merlin-ipvs/merlin/internal/etcdlog"
)

// Config says where the server keeps its data and listens.
type Config struct {
	DataDir   string // etcd's own data lives in DataDir/etcd
	ClientURL string // e.g. http://127.0.0.1:2379
	PeerURL   string // e.g. http://127.0.0.1:2380; only this node uses it
	Name      string // member name; "merlin" when empty
	// QuotaBytes is the backend quota (0: etcd's 2 GiB); past it etcd raises
	// its NOSPACE alarm and refuses writes.
	QuotaBytes int64
	Log        *slog.Logger // where etcd's own logs go; nil: discarded
}

// Server is a single-node etcd server running in this process: the
// default control plane of a merlin started without store endpoints.
type Server struct {
	etcd      *embed.Etcd
	ClientURL string
	stopping  *atomic.Bool
}

// Start starts the server and waits until it serves clients.
// checkDatabase opens an existing etcd database read-only first: etcd
// panics in a goroutine of its own on a corrupt one, which would end merlin
// with a stack trace instead of the reason.
func checkDatabase(path string) (err error) {
	if _, serr := os.Stat(path); serr != nil {
		return nil // none yet: etcd creates it
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("embedded etcd database %s is corrupt (%v): restore it from a snapshot, or move it away to start empty", path, r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return fmt.Errorf("embedded etcd database %s is in use by another process", path)
		}
		return fmt.Errorf("embedded etcd database %s is corrupt (%v): restore it from a snapshot, or move it away to start empty", path, err)
	}
	return db.Close()
}

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
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stopping := &atomic.Bool{}
	cfg.WarningUnaryRequestDuration = time.Second // requests slower than this are logged as warnings
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdlog.Server(log.With("component", "etcd"), stopping))
	// Keep an hour of history: watchers resuming after a pause rarely meet
	// a compacted revision, and a burst of writes is freed within the hour.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "1h"
	cfg.QuotaBackendBytes = c.QuotaBytes
	if err := checkDatabase(filepath.Join(cfg.Dir, "member", "snap", "db")); err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return &Server{etcd: e, ClientURL: cu.String(), stopping: stopping}, nil
	case err := <-e.Err():
		stopping.Store(true)
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-ctx.Done():
		stopping.Store(true)
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready: %w", ctx.Err())
	case <-time.After(60 * time.Second):
		stopping.Store(true)
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after 60s")
	}
}

// Err reports a fatal error of the running server.
func (e *Server) Err() <-chan error { return e.etcd.Err() }

// Close stops the server; what it logs while stopping is debug.
func (e *Server) Close() {
	e.stopping.Store(true)
	e.etcd.Close()
}

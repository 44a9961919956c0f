package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/etcdembed"
	"github.com/merlin-ipvs/merlin/internal/etcdlog"
	"github.com/merlin-ipvs/merlin/internal/tlsconfig"
)

// openStore connects to etcd — the -store-endpoints cluster, or an etcd
// embedded in the data directory (whose failure cancels merlin).
func openStore(ctx context.Context, o *options, log *slog.Logger, cl *cleanups, cancel context.CancelFunc) (*store.Store, error) {
	endpoints := splitList(o.storeEndpoints)
	if len(endpoints) == 0 {
		url, err := startEmbeddedEtcd(ctx, o, log, cl, cancel)
		if err != nil {
			return nil, err
		}
		endpoints = []string{url}
	}
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second,
		Logger: etcdlog.Client(log.With("component", "etcd-client"))}
	if o.storeTLSCA != "" || o.storeTLSCert != "" {
		tc, err := tlsconfig.Client(o.storeTLSCA, o.storeTLSCert, o.storeTLSKey, "")
		if err != nil {
			return nil, fmt.Errorf("store TLS: %w", err)
		}
		cfg.TLS = tc
	}
	kv, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	cl.push(func() { kv.Close() })
	st := store.NewStore(kv, o.storePrefix)
	st.SetQuota(o.storeQuota)
	return st, nil
}

func startEmbeddedEtcd(ctx context.Context, o *options, log *slog.Logger, cl *cleanups, cancel context.CancelFunc) (string, error) {
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return "", fmt.Errorf("data dir: %w", err)
	}
	e, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: o.dataDir, ClientURL: o.etcdClientURL, PeerURL: o.etcdPeerURL, QuotaBytes: o.storeQuota, Log: log})
	if err != nil {
		return "", err
	}
	var watch sync.WaitGroup
	cl.push(watch.Wait) // after Close, which ends it
	cl.push(func() { e.Close() })
	log.Info("embedded etcd started", "client_url", e.ClientURL, "dir", o.dataDir+"/etcd")
	watch.Go(func() {
		// The channel closes when the server stops: on a clean stop that
		// is no failure.
		if err, ok := <-e.Err(); ok && err != nil {
			log.Error("embedded etcd failed", "error", err)
			cancel()
		}
	})
	return e.ClientURL, nil
}

package store

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Prober is the node's one look at etcd: it pings etcd and reads its size
// and alarms, every period while etcd answers and more often while it does
// not. The gRPC health service, merlin_etcd_connected and /readyz all read
// its last result instead of asking etcd themselves.
type Prober struct {
	store    *Store
	log      *slog.Logger
	up, down time.Duration // periods while etcd answers / does not
	onChange func(connected bool)

	mu      sync.Mutex
	probed  bool
	pingErr error
	alarm   error
}

// NewProber probes st every period (a tenth of it while etcd does not
// answer); onChange, if set, hears each change of connectivity (and the
// first result). It starts nothing.
func NewProber(st *Store, period time.Duration, log *slog.Logger, onChange func(connected bool)) *Prober {
	return &Prober{store: st, log: log, up: period, down: max(period/10, 100*time.Millisecond), onChange: onChange}
}

// Run probes until ctx ends.
func (p *Prober) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if p.probe(ctx) {
			t.Reset(p.up)
		} else {
			t.Reset(p.down)
		}
	}
}

// probe looks once; it reports whether etcd answered.
func (p *Prober) probe(ctx context.Context) bool {
	pingErr := p.store.Ping(ctx)
	p.mu.Lock()
	alarm := p.alarm // an alarm query that fails leaves the last answer standing
	p.mu.Unlock()
	if pingErr == nil {
		switch err := p.store.Check(ctx); {
		case err == nil:
			alarm = nil
		case errors.Is(err, ErrEtcdAlarm):
			alarm = err
		default:
			p.log.Debug("etcd usage not known", "error", err)
		}
	}
	if ctx.Err() != nil {
		return true
	}
	p.mu.Lock()
	first, wasUp, wasAlarmed := !p.probed, p.pingErr == nil, p.alarm != nil
	p.probed, p.pingErr, p.alarm = true, pingErr, alarm
	p.mu.Unlock()
	if (alarm != nil) != wasAlarmed {
		if alarm != nil {
			p.log.Error("etcd refuses writes", "error", alarm)
		} else {
			p.log.Info("etcd alarm cleared")
		}
	}
	if p.onChange != nil && (first || wasUp != (pingErr == nil)) {
		p.onChange(pingErr == nil)
	}
	return pingErr == nil
}

// Connected: etcd answered the last probe.
func (p *Prober) Connected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.probed && p.pingErr == nil
}

// Ready says why this node's store is not ready (nil when it is): no
// probe yet, etcd not answering, or an alarm that refuses writes.
func (p *Prober) Ready() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case !p.probed:
		return errors.New("etcd not probed yet")
	case p.pingErr != nil:
		return p.pingErr
	case p.alarm != nil:
		return p.alarm
	}
	return nil
}

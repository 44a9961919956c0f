package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// The prober's view follows etcd: connected and ready once probed, not
// ready with the reason while etcd is stopped (its listener hears each
// change once), connected again after a restart.
func TestProberFollowsEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	st := store.NewStore(etcd.Client(t), prefix)
	var mu sync.Mutex
	var heard []bool
	p := store.NewProber(st, time.Second, quietLogger(), func(up bool) {
		mu.Lock()
		heard = append(heard, up)
		mu.Unlock()
	})
	if err := p.Ready(); err == nil {
		t.Fatal("ready before any probe")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	testenv.Eventually(t, "connected", func() bool { return p.Connected() && p.Ready() == nil })
	etcd.Stop()
	testenv.Eventually(t, "not ready", func() bool { return !p.Connected() && p.Ready() != nil })
	etcd.Restart()
	testenv.Eventually(t, "connected again", func() bool { return p.Connected() && p.Ready() == nil })
	mu.Lock()
	defer mu.Unlock()
	if len(heard) != 3 || !heard[0] || heard[1] || !heard[2] {
		t.Fatalf("the listener heard %v, want [true false true]", heard)
	}
}

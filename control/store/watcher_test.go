package store_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/types"
)

// watched runs a Watcher on client until the test ends and returns a
// function that gives the state its updates add up to.
func watched(t *testing.T, client *clientv3.Client, cfg store.WatcherConfig) (*store.Watcher, func() *store.State) {
	t.Helper()
	w := store.NewWatcher(store.NewStore(client, prefix), quietLogger(), cfg)
	var mu sync.Mutex
	var last *store.State
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(ctx, func(u *store.Update) {
			mu.Lock()
			defer mu.Unlock()
			if last == nil {
				last = &store.State{}
			}
			last.Apply(u)
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w, func() *store.State {
		mu.Lock()
		defer mu.Unlock()
		if last == nil {
			return nil
		}
		return last.Clone()
	}
}

// waitInStep waits until the watcher's view equals a fresh list of etcd.
func waitInStep(t *testing.T, kv *clientv3.Client, latest func() *store.State) {
	t.Helper()
	stor := store.NewStore(kv, prefix)
	testenv.Eventually(t, "the watcher in step with etcd", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := stor.ListState(ctx)
		cancel()
		got := latest()
		if err != nil || got == nil {
			return false
		}
		want, g := st.ListResponse(), got.ListResponse()
		g.Revision = want.Revision // the watcher may have seen a later, unrelated revision
		return proto.Equal(g, want)
	})
}

func put(t *testing.T, stor *store.Store, svc string, ip string, servers int) {
	t.Helper()
	ctx := ctxT(t)
	if _, err := stor.CreateService(ctx, tcpService(svc, ip, 80)); err != nil {
		t.Fatal(err)
	}
	for i := range servers {
		if _, err := stor.CreateServer(ctx, server(svc, fmt.Sprintf("198.19.0.%d", i+1), 80, 1)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWatcherSurvivesEtcdRestart(t *testing.T) {
	for _, kind := range etcdtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			etcd := etcdtest.Start(t, kind)
			kv := etcd.Client(t)
			stor := store.NewStore(kv, prefix)
			put(t, stor, "before", "198.18.0.1", 3)
			w, latest := watched(t, etcd.Client(t), store.WatcherConfig{ProgressInterval: 300 * time.Millisecond, RetryBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
			waitInStep(t, kv, latest)

			etcd.Stop()
			// Wait until the watcher has noticed: the silence watchdog (or
			// the closed watch) makes it list again, which fails while etcd
			// is down and is counted before it is tried.
			deadline := time.Now().Add(30 * time.Second)
			for r := w.Relists(); r[store.RelistSilent]+r[store.RelistClosed] == 0; r = w.Relists() {
				if time.Now().After(deadline) {
					var dump strings.Builder
					_ = pprof.Lookup("goroutine").WriteTo(&dump, 1)
					t.Fatalf("etcd is down and the watcher did not notice: relists %v\n%s", r, dump.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			etcd.Restart()
			put(t, stor, "after", "198.18.0.2", 2)
			if _, err := stor.DeleteService(ctxT(t), "before", 0); err != nil {
				t.Fatal(err)
			}
			waitInStep(t, kv, latest)
			if st := latest(); len(st.Services) != 1 || st.Services["after"] == nil || len(st.Services["after"].Servers) != 2 {
				t.Fatalf("state after restart: %v", st)
			}
			// Usually the silence watchdog re-lists while etcd is down; on a
			// busy machine the client may also resume its watch by itself
			// after the restart. Either way the view must be etcd's, and
			// every list is counted by its reason.
			r := w.Relists()
			total := 0
			for _, n := range r {
				total += n
			}
			if r[store.RelistStart] != 1 || total != r[store.RelistStart]+r[store.RelistSilent]+r[store.RelistClosed] {
				t.Fatalf("relists %v: want only the start and restart reasons", r)
			}
			t.Logf("relists: %v", r)
		})
	}
}

func TestWatcherRelistsAfterCompactionWhileDisconnected(t *testing.T) {
	for _, kind := range etcdtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			etcd := etcdtest.Start(t, kind)
			kv := etcd.Client(t)
			stor := store.NewStore(kv, prefix)
			put(t, stor, "web", "198.18.0.1", 2)

			proxy := etcdtest.NewProxy(t, strings.TrimPrefix(etcd.ClientURL, "http://"))
			// A long progress interval: only the compaction may trigger the re-list.
			w, latest := watched(t, etcdtest.NewClient(t, "http://"+proxy.Addr), store.WatcherConfig{ProgressInterval: time.Hour})
			waitInStep(t, kv, latest)

			proxy.Cut()
			put(t, stor, "api", "198.18.0.2", 3)
			if _, err := stor.UpdateServer(ctxT(t), server("web", "198.19.0.1", 80, 0)); err != nil {
				t.Fatal(err)
			}
			if _, err := stor.DeleteServer(ctxT(t), server("web", "198.19.0.2", 80, 0)); err != nil {
				t.Fatal(err)
			}
			resp, err := kv.Get(ctxT(t), "compact-here")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Compact(ctxT(t), resp.Header.Revision); err != nil {
				t.Fatal(err)
			}
			proxy.Restore()
			waitInStep(t, kv, latest)
			if r := w.Relists(); r[store.RelistCompacted] == 0 {
				t.Fatalf("relists %v: want one for the compaction", r)
			}
			st := latest()
			if got := st.Services["web"].Servers["198.19.0.1:80"].GetConfig().GetWeight().GetValue(); got != 0 || len(st.Services["web"].Servers) != 1 {
				t.Fatalf("changes made while disconnected are missing: %v", st.ListResponse())
			}
		})
	}
}

func TestWatcherSkipsGarbage(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	kv := etcd.Client(t)
	stor := store.NewStore(kv, prefix)
	put(t, stor, "good", "198.18.0.1", 2)
	w, latest := watched(t, kv, store.WatcherConfig{})
	waitInStep(t, kv, latest)

	ctx := ctxT(t)
	garbage := map[string]string{
		prefix + "/services/bad":                     "\xff\xfe not protobuf",
		prefix + "/servers/good/198.19.0.9:80":       "\x0a\x04good\x12\xff",
		prefix + "/servers/nosuch/198.19.0.1:80":     string(mustMarshal(t, server("nosuch", "198.19.0.1", 80, 1))),
		prefix + "/services/wrong-scheduler":         string(mustMarshal(t, &types.VirtualService{Id: "wrong-scheduler", Key: &types.VirtualService_Key{Ip: "198.18.0.3", Port: 80, Protocol: types.Protocol_TCP}, Config: &types.VirtualService_Config{Scheduler: "nope"}})),
		prefix + "/servers/good/198.19.0.10:80":      string(mustMarshal(t, server("good", "198.19.0.11", 80, 1))), // key and value disagree
		prefix + "/services/id-mismatch":             string(mustMarshal(t, tcpService("other", "198.18.0.4", 80))),
		prefix + "/servers/good/[2001:db8::1]:80":    string(mustMarshal(t, server("good", "2001:db8::1", 80, 1))), // IPv6 behind IPv4 NAT
		prefix + "/vips/tcp/198.18.0.99:80":          "not ours to decode",
		prefix + "/nodes/some-node/status-from-2030": "ignored",
	}
	for k, v := range garbage {
		if _, err := kv.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	put(t, stor, "later", "198.18.0.5", 1)
	waitInStep(t, kv, latest)
	st := latest()
	if len(st.Services) != 2 || len(st.Services["good"].Servers) != 2 || st.Services["later"] == nil {
		t.Fatalf("good objects not all delivered: %v", st.ListResponse())
	}
	if len(st.Invalid) != 7 || w.InvalidKeys() != 7 {
		t.Fatalf("invalid keys %d (counted %d), want 7: %v", len(st.Invalid), w.InvalidKeys(), st.Invalid)
	}
	// The API lists the same and reports the bad keys.
	list, err := stor.List(ctx)
	if err != nil || len(list.InvalidKeys) != 7 || len(list.Items) != 2 {
		t.Fatalf("list with garbage: %v %v", list, err)
	}
	// Repairing a value brings the object in.
	fixed := tcpService("bad", "198.18.0.6", 80)
	if _, err := kv.Put(ctx, prefix+"/services/bad", string(mustMarshal(t, fixed))); err != nil {
		t.Fatal(err)
	}
	waitInStep(t, kv, latest)
	if latest().Services["bad"] == nil || len(latest().Invalid) != 6 {
		t.Fatalf("repaired value not picked up: %v", latest().Invalid)
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWatcherPeriodicCheckKeepsTheWatch(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	kv := etcd.Client(t)
	stor := store.NewStore(kv, prefix)
	put(t, stor, "web", "198.18.0.1", 3)
	w, latest := watched(t, kv, store.WatcherConfig{ResyncPeriod: 100 * time.Millisecond})
	waitInStep(t, kv, latest)
	// Each write is followed by a periodic check before the next one.
	for i := range 5 {
		if _, err := stor.UpdateServer(ctxT(t), server("web", "198.19.0.1", 80, uint32(i+2))); err != nil {
			t.Fatal(err)
		}
		for checks, deadline := w.Checks(), time.Now().Add(10*time.Second); w.Checks() <= checks; {
			if time.Now().After(deadline) {
				t.Fatalf("no periodic check after write %d", i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitInStep(t, kv, latest)
	if r := w.Relists(); r[store.RelistPeriodic] != 0 || r[store.RelistStart] != 1 {
		t.Fatalf("%d checks, relists %v: want checks that found nothing to re-list", w.Checks(), r)
	}
}

// The original Merlin's etcd2 backend stored base64 text of the protobuf,
// which `etcdctl migrate` copies into v3 as it is: merlin reads it.
func TestOriginalEtcd2Values(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	kv := etcd.Client(t)
	stor := store.NewStore(kv, prefix)
	ctx := ctxT(t)
	b64 := func(m proto.Message) string { return base64.StdEncoding.EncodeToString(mustMarshal(t, m)) }
	for k, v := range map[string]string{
		prefix + "/services/old":              b64(tcpService("old", "198.18.0.7", 80)),
		prefix + "/servers/old/198.19.0.7:80": b64(server("old", "198.19.0.7", 80, 3)),
	} {
		if _, err := kv.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	list, err := stor.List(ctx)
	if err != nil || len(list.InvalidKeys) != 0 || len(list.Items) != 1 || len(list.Items[0].Servers) != 1 {
		t.Fatalf("list of etcd2-encoded values: %v %v", list, err)
	}
	if w := list.Items[0].Servers[0].Config.Weight.GetValue(); w != 3 {
		t.Fatalf("server weight %d, want 3", w)
	}
	// A write stores it in merlin's encoding.
	if _, err := stor.UpdateServer(ctx, server("old", "198.19.0.7", 80, 4)); err != nil {
		t.Fatal(err)
	}
	resp, err := kv.Get(ctx, prefix+"/servers/old/198.19.0.7:80")
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Value[0] != 0x0a {
		t.Fatalf("rewritten value %q, %v", resp.Kvs, err)
	}
}

// The whole path from the original Merlin's default backend: its values
// written through etcd's v2 API as base64 text, `etcdctl migrate` (the
// README's upgrade step), and merlin lists them from v3.
func TestOriginalEtcd2Migration(t *testing.T) {
	etcd := etcdtest.StartV2(t)
	b64 := func(m proto.Message) string { return base64.StdEncoding.EncodeToString(mustMarshal(t, m)) }
	for k, v := range map[string]string{
		prefix + "/services/old":              b64(tcpService("old", "198.18.0.7", 80)),
		prefix + "/servers/old/198.19.0.7:80": b64(server("old", "198.19.0.7", 80, 3)),
	} {
		etcdtest.PutV2(t, etcd.ClientURL, k, v)
	}
	etcd.MigrateV2()
	stor := store.NewStore(etcd.Client(t), prefix)
	list, err := stor.List(ctxT(t))
	if err != nil || len(list.InvalidKeys) != 0 || len(list.Items) != 1 || len(list.Items[0].Servers) != 1 {
		t.Fatalf("list after etcdctl migrate: %v %v", list, err)
	}
}

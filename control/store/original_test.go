package store_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/types"
)

// Objects the original Merlin accepted and merlin finds invalid are listed
// as invalid, and an update that makes one valid succeeds: merged into
// the object as stored, then validated.
func TestOriginalInvalidObjectsFixedInPlace(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	kv := etcd.Client(t)
	stor := store.NewStore(kv, prefix)
	ctx := ctxT(t)
	odd := tcpService("oddsched", "198.18.0.20", 80)
	odd.Config.Scheduler = "bogus"
	loop := tcpService("loop", "127.0.0.9", 80)
	heavy := server("good", "198.19.0.2", 80, 70000)
	fast := server("good", "198.19.0.3", 80, 1)
	fast.HealthCheck = &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("http://:80/"), Period: durationpb.New(50 * time.Millisecond), Timeout: durationpb.New(10 * time.Millisecond), UpThreshold: 2, DownThreshold: 2}
	raw := map[string]*types.VirtualService{"oddsched": odd, "loop": loop, "good": tcpService("good", "198.18.0.21", 80)}
	for id, svc := range raw {
		putRaw(t, kv, prefix+"/services/"+id, mustMarshal(t, svc))
	}
	putRaw(t, kv, prefix+"/servers/oddsched/198.19.0.1:80", mustMarshal(t, server("oddsched", "198.19.0.1", 80, 1)))
	putRaw(t, kv, prefix+"/servers/good/198.19.0.2:80", mustMarshal(t, heavy))
	putRaw(t, kv, prefix+"/servers/good/198.19.0.3:80", mustMarshal(t, fast))
	list, err := stor.List(ctx)
	if err != nil || len(list.InvalidKeys) != 5 {
		t.Fatalf("invalid keys %v, want 5 (3 objects, a server under an invalid service, loop): %v", list.GetInvalidKeys(), err)
	}

	// A server cannot be added under a service stored invalid; the service
	// is fixed by a merge, and its server comes back with it.
	if _, err := stor.CreateServer(ctx, server("oddsched", "198.19.0.9", 80, 1)); err == nil || !strings.Contains(err.Error(), "stored invalid") {
		t.Fatalf("server added under an invalid service: %v", err)
	}
	if _, err := stor.GetService(ctx, "oddsched"); !errors.Is(err, store.ErrStoredInvalid) {
		t.Fatalf("get of an invalid service: %v, want ErrStoredInvalid", err)
	}
	mustWrite(t)(stor.UpdateService(ctx, &types.VirtualService{Id: "oddsched", Config: &types.VirtualService_Config{Scheduler: "rr"}}))
	mustWrite(t)(stor.UpdateService(ctx, &types.VirtualService{Id: "loop", Key: &types.VirtualService_Key{Ip: "198.18.0.22", Port: 80, Protocol: types.Protocol_TCP}}))
	mustWrite(t)(stor.UpdateServer(ctx, &types.RealServer{ServiceID: "good", Key: heavy.Key, Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(100)}}))
	mustWrite(t)(stor.UpdateServer(ctx, &types.RealServer{ServiceID: "good", Key: fast.Key, HealthCheck: &types.RealServer_HealthCheck{Period: durationpb.New(time.Second), Timeout: durationpb.New(500 * time.Millisecond)}}))
	list, err = stor.List(ctx)
	if err != nil || len(list.InvalidKeys) != 0 || len(list.Items) != 3 {
		t.Fatalf("after the fixes: %v, %v", list, err)
	}
	// An update that leaves it invalid says why and changes nothing.
	putRaw(t, kv, prefix+"/services/oddsched", mustMarshal(t, odd))
	if _, err := stor.UpdateService(ctx, &types.VirtualService{Id: "oddsched", Config: &types.VirtualService_Config{Flags: []string{"flag-1"}}}); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("an update leaving the service invalid: %v", err)
	}
}

// The original never wrote the VIP index: merlin builds it for the
// services it finds, reports VIPs several of them share, and refuses a new
// service on a migrated service's VIP.
func TestOriginalVIPIndex(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	kv := etcd.Client(t)
	stor := store.NewStore(kv, prefix)
	ctx := ctxT(t)
	for _, svc := range []*types.VirtualService{tcpService("a", "198.18.0.30", 80), tcpService("b", "198.18.0.30", 80), tcpService("c", "198.18.0.31", 80)} {
		putRaw(t, kv, prefix+"/services/"+svc.Id, mustMarshal(t, svc))
	}
	rep, err := stor.CheckVIPIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Indexed != 2 || len(rep.Duplicates) != 1 || strings.Join(rep.Duplicates[0].Services, ",") != "a,b" || rep.Duplicates[0].Holder != "a" {
		t.Fatalf("report %+v", rep)
	}
	if _, err := stor.CreateService(ctx, tcpService("new", "198.18.0.31", 80)); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("a new service on a migrated service's VIP: %v, want ErrAlreadyExists", err)
	}
	again, err := stor.CheckVIPIndex(ctx)
	if err != nil || again.Indexed != 0 || len(again.Duplicates) != 1 {
		t.Fatalf("second check %+v, %v", again, err)
	}
}

func putRaw(t *testing.T, kv *clientv3.Client, key string, value []byte) {
	t.Helper()
	if _, err := kv.Put(ctxT(t), key, string(value)); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T) func(int64, error) {
	return func(_ int64, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Services the original left on one VIP: the first by ID is the desired
// state on every node, whatever order the values come in, the others are
// listed invalid; the next takes over when it goes.
func TestOriginalSharedVIPOneServed(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	kv := etcd.Client(t)
	for _, id := range []string{"twin-c", "twin-b"} {
		putRaw(t, kv, prefix+"/services/"+id, mustMarshal(t, tcpService(id, "198.18.0.40", 80)))
	}
	putRaw(t, kv, prefix+"/servers/twin-c/198.19.0.5:80", mustMarshal(t, server("twin-c", "198.19.0.5", 80, 1)))
	_, latest := watched(t, kv, store.WatcherConfig{})
	waitInStep(t, kv, latest)
	served := func() string {
		st := latest()
		var ids []string
		for id := range st.Services {
			ids = append(ids, id)
		}
		return strings.Join(ids, ",")
	}
	if got := served(); got != "twin-b" {
		t.Fatalf("served %q, want twin-b", got)
	}
	if r := latest().Invalid[prefix+"/services/twin-c"]; !strings.Contains(r, `shares VIP tcp/198.18.0.40:80 with service "twin-b"`) {
		t.Fatalf("twin-c's reason %q", r)
	}
	putRaw(t, kv, prefix+"/services/twin-a", mustMarshal(t, tcpService("twin-a", "198.18.0.40", 80)))
	waitInStep(t, kv, latest)
	if got := served(); got != "twin-a" {
		t.Fatalf("after twin-a came: served %q, want twin-a", got)
	}
	for _, id := range []string{"twin-a", "twin-b"} {
		if _, err := kv.Delete(ctxT(t), prefix+"/services/"+id); err != nil {
			t.Fatal(err)
		}
	}
	waitInStep(t, kv, latest)
	st := latest()
	if got := served(); got != "twin-c" || len(st.Services["twin-c"].Servers) != 1 || len(st.Invalid) != 0 {
		t.Fatalf("after the others went: served %q, invalid %v", got, st.Invalid)
	}
}

package store_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"sort"
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

type layoutStore interface {
	CreateService(context.Context, *types.VirtualService) (int64, error)
	UpdateService(context.Context, *types.VirtualService) (int64, error)
	DeleteService(context.Context, string, int64) (int64, error)
	CreateServer(context.Context, *types.RealServer) (int64, error)
	UpdateServer(context.Context, *types.RealServer) (int64, error)
	DeleteServer(context.Context, *types.RealServer) (int64, error)
}

// TestStoreLayoutUnchanged: the same calls write byte for byte the keys
// and values that merlin at 5525f76 (before the store had a package of its
// own and one write path) wrote, which testdata holds; and what that
// version wrote reads back as the same state.
func TestStoreLayoutUnchanged(t *testing.T) {
	golden, err := os.ReadFile("testdata/layout-5525f76.txt")
	if err != nil {
		t.Fatal(err)
	}
	kv := etcdtest.Start(t, etcdtest.Embedded).Client(t)
	ctx := ctxT(t)
	st := store.NewStore(kv, "/merlin")
	layoutWrites(t, ctx, st)
	if got := layoutDump(t, ctx, kv, "/merlin/"); got != string(golden) {
		t.Fatalf("etcd holds:\n%s\nmerlin at 5525f76 wrote:\n%s", got, golden)
	}
	// The old writes, loaded under another prefix, list as the same state.
	for _, line := range strings.Split(strings.TrimSpace(string(golden)), "\n") {
		key, val, _ := strings.Cut(line, " ")
		raw, err := hex.DecodeString(val)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, strings.Replace(key, "/merlin/", "/old/", 1), string(raw)); err != nil {
			t.Fatal(err)
		}
	}
	now, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old, err := store.NewStore(kv, "/old").List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := listed(now), listed(old); a != b || len(old.InvalidKeys) != 0 {
		t.Fatalf("the old keys list as\n%s\n(invalid: %v), the new as\n%s", b, old.InvalidKeys, a)
	}
}

// listed is a List without revisions, for comparing.
func listed(l *types.ListResponse) string {
	var b strings.Builder
	for _, it := range l.Items {
		it.Service.Revision = 0
		fmt.Fprintln(&b, it.Service)
		for _, s := range it.Servers {
			s.Revision = 0
			fmt.Fprintln(&b, " ", s)
		}
	}
	return b.String()
}

func layoutDump(t *testing.T, ctx context.Context, kv *clientv3.Client, prefix string) string {
	resp, err := kv.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range resp.Kvs {
		lines = append(lines, fmt.Sprintf("%s %s", e.Key, hex.EncodeToString(e.Value)))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

// layoutWrites makes a fixed set of changes through the store's calls:
// services of every kind of key, servers with checks and overrides, a key
// move, a merge, a deletion, a drain, a confirmation.
func layoutWrites(t *testing.T, ctx context.Context, st layoutStore) {
	t.Helper()
	must := func(_ int64, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.CreateService(ctx, &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.1", Port: 80, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: "mh", Flags: []string{"mh-fallback", "mh-port"}}}))
	must(st.CreateService(ctx, &types.VirtualService{Id: "dns6", Key: &types.VirtualService_Key{Ip: "2001:db8::53", Port: 53, Protocol: types.Protocol_UDP},
		Config: &types.VirtualService_Config{Scheduler: "sh", Flags: []string{"sh-port"}}}))
	must(st.CreateService(ctx, &types.VirtualService{Id: "gone", Key: &types.VirtualService_Key{Ip: "198.18.0.9", Port: 443, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: "rr"}}))
	must(st.CreateServer(ctx, &types.RealServer{ServiceID: "web", Key: &types.RealServer_Key{Ip: "198.19.0.2", Port: 8080},
		Config:      &types.RealServer_Config{Weight: wrapperspb.UInt32(5), Forward: types.ForwardMethod_MASQ},
		HealthCheck: &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("http://:8080/health"), Period: durationpb.New(2 * time.Second), Timeout: durationpb.New(time.Second), UpThreshold: 2, DownThreshold: 3}}))
	must(st.CreateServer(ctx, &types.RealServer{ServiceID: "web", Key: &types.RealServer_Key{Ip: "198.19.0.3", Port: 8080},
		Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(0), Forward: types.ForwardMethod_ROUTE}}))
	must(st.CreateServer(ctx, &types.RealServer{ServiceID: "dns6", Key: &types.RealServer_Key{Ip: "2001:db8::1:2", Port: 53},
		Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(1), Forward: types.ForwardMethod_TUNNEL}}))
	must(st.CreateServer(ctx, &types.RealServer{ServiceID: "gone", Key: &types.RealServer_Key{Ip: "198.19.0.9", Port: 443},
		Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(1), Forward: types.ForwardMethod_MASQ}}))
	must(st.UpdateService(ctx, &types.VirtualService{Id: "web", Config: &types.VirtualService_Config{Flags: []string{"mh-port"}}}))
	must(st.UpdateService(ctx, &types.VirtualService{Id: "dns6", Key: &types.VirtualService_Key{Ip: "2001:db8::54", Port: 53, Protocol: types.Protocol_UDP}}))
	must(st.UpdateServer(ctx, &types.RealServer{ServiceID: "web", Key: &types.RealServer_Key{Ip: "198.19.0.3", Port: 8080},
		Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(7)}}))
	must(st.DeleteServer(ctx, &types.RealServer{ServiceID: "web", Key: &types.RealServer_Key{Ip: "198.19.0.2", Port: 8080}}))
	must(st.DeleteService(ctx, "gone", 0))
}

package store

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/types"
)

// TestHoldsAt: the periodic check finds etcd as the watcher holds it, and
// finds each change the watcher did not see: a write, a new key, a
// deleted one, a value merlin cannot read, a drain.
func TestHoldsAt(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	kv := etcd.Client(t)
	s := NewStore(kv, "/merlin")
	ctx := context.Background()
	for _, svc := range []*types.VirtualService{svcAt("web", "198.18.0.1", "wrr"), svcAt("api", "198.18.0.2", "rr")} {
		if _, err := s.CreateService(ctx, svc); err != nil {
			t.Fatal(err)
		}
	}
	server := func(ip string, weight uint32) *types.RealServer {
		return &types.RealServer{ServiceID: "web", Key: &types.RealServer_Key{Ip: ip, Port: 8080},
			Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(weight), Forward: types.ForwardMethod_MASQ}}
	}
	for _, ip := range []string{"198.19.0.1", "198.19.0.2"} {
		if _, err := s.CreateServer(ctx, server(ip, 1)); err != nil {
			t.Fatal(err)
		}
	}
	for name, change := range map[string]func() error{
		"a weight":          func() error { _, err := s.UpdateServer(ctx, server("198.19.0.1", 5)); return err },
		"a new server":      func() error { _, err := s.CreateServer(ctx, server("198.19.0.3", 1)); return err },
		"a deleted service": func() error { _, err := s.DeleteService(ctx, "api", 0); return err },
		"a value merlin cannot read": func() error {
			_, err := kv.Put(ctx, "/merlin/servers/web/198.19.0.9:80", "garbage")
			return err
		},
		"a drain": func() error {
			return s.SetDrain(ctx, "n1", &Drain{Since: time.Unix(1e9, 0), WithdrawAfter: time.Minute})
		},
	} {
		st, err := s.ListState(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if same, err := s.holdsAt(ctx, st.checkPoint()); err != nil || !same {
			t.Fatalf("before %s: etcd does not hold the state listed from it (%v)", name, err)
		}
		if err := change(); err != nil {
			t.Fatal(err)
		}
		latest, err := s.ListState(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.seen = latest.seen // the watcher saw the revision but missed the event
		if same, err := s.holdsAt(ctx, st.checkPoint()); err != nil || same {
			t.Errorf("%s missed by the watcher: the check finds nothing (%v)", name, err)
		}
	}
}

package api_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/api"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/types"
)

// TestAPIServerDrain: a drain sets the weight to 0 and is stored; it
// completes only once every node reports no connection for it, then
// deletes the server when asked; a deadline ends one with connections
// left; cancel restores the weight; bad requests name the field and
// write nothing.
func TestAPIServerDrain(t *testing.T) {
	var srv *api.Server
	env := startAPIWith(t, etcdtest.Embedded, func(s *api.Server) { srv = s })
	ctx, c := ctxT(t), env.client
	fctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.RunDrainFinisher(fctx, 50*time.Millisecond) }()
	t.Cleanup(func() { stop(); <-done })
	noErr(t)(c.CreateService(ctx, tcpService("web", "198.18.0.1", 80)))
	for _, ip := range []string{"198.19.0.2", "198.19.0.3", "198.19.0.4"} {
		noErr(t)(c.CreateServer(ctx, server("web", ip, 8080, 5)))
	}
	key := func(ip string) *types.RealServer_Key { return &types.RealServer_Key{Ip: ip, Port: 8080} }

	for _, bad := range []struct {
		req   *types.DrainServerRequest
		code  codes.Code
		field string
	}{
		{&types.DrainServerRequest{ServiceId: "web", Server: key("198.19.0.9")}, codes.NotFound, "198.19.0.9:8080"},
		{&types.DrainServerRequest{ServiceId: "nope", Server: key("198.19.0.2")}, codes.NotFound, "nope"},
		{&types.DrainServerRequest{ServiceId: "web", Server: &types.RealServer_Key{Ip: "host", Port: 8080}}, codes.InvalidArgument, "server.ip"},
		{&types.DrainServerRequest{ServiceId: "web", Server: key("198.19.0.2"), Deadline: durationpb.New(-time.Second)}, codes.InvalidArgument, "deadline"},
		{&types.DrainServerRequest{ServiceId: "web", Server: key("198.19.0.2"), Deadline: durationpb.New(8 * 24 * time.Hour)}, codes.InvalidArgument, "deadline"},
		{&types.DrainServerRequest{ServiceId: "web", Server: key("198.19.0.2"), Cancel: true}, codes.NotFound, "not draining"},
	} {
		_, err := c.DrainServer(ctx, bad.req)
		if wantCode(t, err, bad.code); !strings.Contains(err.Error(), bad.field) {
			t.Errorf("%v: %v does not name %q", bad.req, err, bad.field)
		}
	}
	if st := statusOf(t, c); len(st.ServerDrains) != 0 || weightOf(t, c, "198.19.0.2") != 5 {
		t.Fatalf("a refused drain wrote something: %v", st.ServerDrains)
	}

	st := store.NewStore(env.kv, prefix)
	lease, err := st.GrantNodeLease(ctx, ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	report := func(node string, server string, rev int64, active uint32) {
		t.Helper()
		ns := &types.NodeStatus{Node: node}
		if server != "" {
			ns.ServerDrains = []*types.ServerDrainProgress{{ServiceId: "web", Server: server, DrainRevision: rev, Active: active}}
		}
		if err := st.PutNodeStatus(ctx, lease, ns); err != nil {
			t.Fatal(err)
		}
	}
	report("lb1", "", 0, 0)
	report("lb2", "", 0, 0)

	// Then delete: complete once both nodes report zero, not before.
	noErr(t)(c.DrainServer(ctx, &types.DrainServerRequest{ServiceId: "web", Server: key("198.19.0.2"), ThenDelete: true}))
	_, err = c.DrainServer(ctx, &types.DrainServerRequest{ServiceId: "web", Server: key("198.19.0.2")})
	wantCode(t, err, codes.AlreadyExists)
	d := drainOf(t, c, "198.19.0.2:8080")
	if weightOf(t, c, "198.19.0.2") != 0 || d.State != "draining" || d.PreviousWeight != 5 || len(d.Nodes) != 2 || d.Nodes[0].Reported {
		t.Fatalf("after the start: weight %d, drain %v", weightOf(t, c, "198.19.0.2"), d)
	}
	report("lb1", "198.19.0.2:8080", d.Revision, 3)
	report("lb2", "198.19.0.2:8080", d.Revision, 0)
	waitStatus(t, c, "lb1's 3 connections in the drain", func(s *types.StatusResponse) bool {
		d := findDrain(s, "198.19.0.2:8080")
		return d != nil && d.Nodes[0].Reported && d.Nodes[0].Active == 3 && d.Nodes[1].Reported
	})
	report("lb1", "198.19.0.2:8080", d.Revision-1, 0) // a report of another drain counts for nothing
	// A deadline ends a drain with connections left; the server stays at 0.
	// The finisher rounds that see it also see the report above.
	noErr(t)(c.DrainServer(ctx, &types.DrainServerRequest{ServiceId: "web", Server: key("198.19.0.3"), Deadline: durationpb.New(500 * time.Millisecond)}))
	waitStatus(t, c, "the deadline", func(s *types.StatusResponse) bool {
		d := findDrain(s, "198.19.0.3:8080")
		return d != nil && d.State == store.DrainDeadline && d.CompletedAt != nil
	})
	if weightOf(t, c, "198.19.0.3") != 0 {
		t.Fatal("the server's weight changed at the deadline")
	}
	if findDrain(statusOf(t, c), "198.19.0.2:8080") == nil {
		t.Fatal("the drain completed on a report of another drain")
	}
	report("lb1", "198.19.0.2:8080", d.Revision, 0)
	waitStatus(t, c, "the drain over and the server deleted", func(s *types.StatusResponse) bool { return findDrain(s, "198.19.0.2:8080") == nil })
	if item, err := c.GetService(ctx, wrapperspb.String("web")); err != nil || len(item.Servers) != 2 {
		t.Fatalf("after the drain: %v, %v", item, err)
	}
	// A weight set again ends the record.
	noErr(t)(c.UpdateServer(ctx, &types.RealServer{ServiceID: "web", Key: key("198.19.0.3"), Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(2)}}))
	waitStatus(t, c, "the record gone once the server has a weight", func(s *types.StatusResponse) bool { return findDrain(s, "198.19.0.3:8080") == nil })

	// Cancel restores the weight.
	noErr(t)(c.DrainServer(ctx, &types.DrainServerRequest{ServiceId: "web", Server: key("198.19.0.4")}))
	noErr(t)(c.DrainServer(ctx, &types.DrainServerRequest{ServiceId: "web", Server: key("198.19.0.4"), Cancel: true}))
	if w := weightOf(t, c, "198.19.0.4"); w != 5 || findDrain(statusOf(t, c), "198.19.0.4:8080") != nil {
		t.Fatalf("after cancel: weight %d", w)
	}
}

func statusOf(t *testing.T, c types.MerlinClient) *types.StatusResponse {
	t.Helper()
	s, err := c.Status(context.Background(), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func findDrain(s *types.StatusResponse, server string) *types.ServerDrainStatus {
	for _, d := range s.ServerDrains {
		if d.Server == server {
			return d
		}
	}
	return nil
}

func drainOf(t *testing.T, c types.MerlinClient, server string) *types.ServerDrainStatus {
	t.Helper()
	d := findDrain(statusOf(t, c), server)
	if d == nil {
		t.Fatalf("no drain of %s in status", server)
	}
	return d
}

func waitStatus(t *testing.T, c types.MerlinClient, what string, cond func(*types.StatusResponse) bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond(statusOf(t, c)) {
			return
		}
	}
	t.Fatalf("no %s: %v", what, statusOf(t, c).ServerDrains)
}

func weightOf(t *testing.T, c types.MerlinClient, ip string) uint32 {
	t.Helper()
	item, err := c.GetService(context.Background(), wrapperspb.String("web"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range item.Servers {
		if s.Key.Ip == ip {
			return s.Config.GetWeight().GetValue()
		}
	}
	t.Fatalf("no server %s", ip)
	return 0
}

package api_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/api"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// apiCall is one RPC the fuzzer may make: the request is decoded from the
// fuzzer's bytes (any wire bytes), sent over gRPC, answered by the real
// server on a real etcd.
type apiCall struct {
	name string
	call func(ctx context.Context, c types.MerlinClient, raw []byte) error
}

func decoded[M proto.Message](raw []byte, m M) (M, bool) {
	return m, proto.Unmarshal(raw, m) == nil
}

var apiCalls = []apiCall{
	{"CreateService", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.VirtualService{}); ok {
			_, err := c.CreateService(ctx, m)
			return err
		}
		return nil
	}},
	{"UpdateService", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.VirtualService{}); ok {
			_, err := c.UpdateService(ctx, m)
			return err
		}
		return nil
	}},
	{"DeleteService", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &wrapperspb.StringValue{}); ok {
			_, err := c.DeleteService(ctx, m)
			return err
		}
		return nil
	}},
	{"DeleteServiceAtRevision", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.DeleteServiceRequest{}); ok {
			_, err := c.DeleteServiceAtRevision(ctx, m)
			return err
		}
		return nil
	}},
	{"CreateServer", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.RealServer{}); ok {
			_, err := c.CreateServer(ctx, m)
			return err
		}
		return nil
	}},
	{"UpdateServer", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.RealServer{}); ok {
			_, err := c.UpdateServer(ctx, m)
			return err
		}
		return nil
	}},
	{"DeleteServer", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.RealServer{}); ok {
			_, err := c.DeleteServer(ctx, m)
			return err
		}
		return nil
	}},
	{"GetService", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &wrapperspb.StringValue{}); ok {
			_, err := c.GetService(ctx, m)
			return err
		}
		return nil
	}},
	{"ConfirmDeletions", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.ConfirmDeletionsRequest{}); ok {
			_, err := c.ConfirmDeletions(ctx, m)
			return err
		}
		return nil
	}},
	{"DrainNode", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.DrainNodeRequest{}); ok {
			_, err := c.DrainNode(ctx, m)
			return err
		}
		return nil
	}},
	{"DrainServer", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.DrainServerRequest{}); ok {
			_, err := c.DrainServer(ctx, m)
			return err
		}
		return nil
	}},
	{"ApplyChanges", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		if m, ok := decoded(raw, &types.ApplyChangesRequest{}); ok {
			_, err := c.ApplyChanges(ctx, m)
			return err
		}
		return nil
	}},
	{"Watch", func(ctx context.Context, c types.MerlinClient, raw []byte) error {
		m, ok := decoded(raw, &types.WatchRequest{})
		if !ok {
			return nil
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		stream, err := c.Watch(wctx, m)
		if err != nil {
			return err
		}
		_, err = stream.Recv() // the first event (the state), or the refusal
		if status.Code(err) == codes.DeadlineExceeded {
			return nil
		}
		return err
	}},
}

// fuzzOps splits the fuzzer's bytes into calls: a selector byte, a length
// byte, then that many bytes of request.
func fuzzOps(data []byte, each func(apiCall, []byte)) {
	for len(data) >= 2 {
		c, n := apiCalls[int(data[0])%len(apiCalls)], int(data[1])
		data = data[2:]
		n = min(n, len(data))
		each(c, data[:n])
		data = data[n:]
	}
}

func op(selector string, m proto.Message) []byte {
	raw, _ := proto.Marshal(m)
	for i, c := range apiCalls {
		if c.name == selector {
			return append([]byte{byte(i), byte(len(raw))}, raw...)
		}
	}
	panic(selector)
}

// FuzzAPI sends sequences of arbitrary requests to the API served over
// gRPC from a real embedded etcd. After each sequence: no call answered
// Internal or Unknown, everything stored still validates unchanged, and the
// VIP index names exactly the stored services.
func FuzzAPI(f *testing.F) {
	svc := tcpService("web", "198.18.0.10", 80)
	f.Add(append(op("CreateService", svc), op("CreateServer", server("web", "198.19.0.2", 80, 1))...))
	f.Add(append(append(op("CreateService", tcpService("a", "198.18.0.11", 80)), op("UpdateService", &types.VirtualService{Id: "a", Key: &types.VirtualService_Key{Ip: "2001:db8::1", Port: 80, Protocol: types.Protocol_TCP}})...),
		op("UpdateService", &types.VirtualService{Id: "a", Key: &types.VirtualService_Key{Ip: "::ffff:198.18.0.10", Port: 80, Protocol: types.Protocol_TCP}})...))
	f.Add(append(op("CreateService", svc), op("DeleteServiceAtRevision", &types.DeleteServiceRequest{Id: "web", Revision: 1 << 40})...))
	f.Add(append(op("UpdateServer", server("web", "::ffff:198.19.0.2", 80, 0)), op("DeleteServer", server("web", "198.19.0.2", 80, 0))...))
	f.Add(append(op("Watch", &types.WatchRequest{FromRevision: 1 << 50}), op("ConfirmDeletions", &types.ConfirmDeletionsRequest{Revision: 9})...))
	f.Add(op("DrainNode", &types.DrainNodeRequest{Node: "n1"}))
	f.Add(append(append(op("CreateService", svc), op("CreateServer", server("web", "198.19.0.2", 80, 3))...),
		op("DrainServer", &types.DrainServerRequest{ServiceId: "web", Server: &types.RealServer_Key{Ip: "198.19.0.2", Port: 80}, ThenDelete: true})...))
	f.Add(append(op("CreateService", svc), op("ApplyChanges", &types.ApplyChangesRequest{Changes: []*types.Change{
		{Change: &types.Change_UpdateService{UpdateService: &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.11", Port: 80, Protocol: types.Protocol_TCP}}}},
		{Change: &types.Change_CreateService{CreateService: tcpService("other", "198.18.0.10", 80)}},
		{Change: &types.Change_CreateServer{CreateServer: server("other", "198.19.0.3", 80, 1)}},
	}})...))

	etcd := etcdtest.Start(f, etcdtest.Embedded)
	kv := etcd.Client(f)
	srv := api.NewServer(store.NewStore(kv, prefix), quietLogger())
	g := api.NewGRPCServer(srv, api.GRPCOptions{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	f.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), append(types.WithRevisions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })
	client := types.NewMerlinClient(conn)

	f.Fuzz(func(t *testing.T, data []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := kv.Delete(ctx, prefix+"/", clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
		fuzzOps(data, func(c apiCall, raw []byte) {
			err := c.call(ctx, client, raw)
			if code := status.Code(err); code == codes.Internal || code == codes.Unknown {
				t.Fatalf("%s(%x): %v", c.name, raw, err)
			}
		})
		checkStored(t, ctx, kv, client)
	})
}

// checkStored: what List returns validates unchanged, and the VIP index
// holds one entry per service, naming it.
func checkStored(t *testing.T, ctx context.Context, kv *clientv3.Client, c types.MerlinClient) {
	t.Helper()
	list, err := c.List(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	vips := map[string]string{}
	for _, item := range list.Items {
		svc := proto.Clone(item.Service).(*types.VirtualService)
		svc.Revision = 0
		again, err := model.NormalizeService(svc)
		if err != nil || !proto.Equal(again, svc) {
			t.Fatalf("stored service does not validate unchanged: %v → %v (%v)", svc, again, err)
		}
		for _, srv := range item.Servers {
			s := proto.Clone(srv).(*types.RealServer)
			s.Revision = 0
			if s.HealthCheck != nil && proto.Equal(s.HealthCheck, &types.RealServer_HealthCheck{}) {
				s.HealthCheck = nil // List fills an empty one in for old clients
			}
			if again, err := model.NormalizeServer(s, svc); err != nil || !proto.Equal(again, s) {
				t.Fatalf("stored server does not validate unchanged: %v → %v (%v)", s, again, err)
			}
		}
		vips[model.VIPKey(svc.Key)] = svc.Id
	}
	resp, err := kv.Get(ctx, prefix+"/vips/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != len(vips) {
		t.Fatalf("VIP index has %d entries for %d services", len(resp.Kvs), len(vips))
	}
	for _, e := range resp.Kvs {
		vip := strings.TrimPrefix(string(e.Key), prefix+"/vips/")
		if vips[vip] != string(e.Value) {
			t.Fatalf("VIP index: %s → %q, but the service holding it is %q", vip, e.Value, vips[vip])
		}
	}
}

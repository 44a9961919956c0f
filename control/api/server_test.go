package api_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/api"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/testobj"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

const prefix = "/merlin"

type apiEnv struct {
	etcd     *etcdtest.Server
	kv       *clientv3.Client
	client   types.MerlinClient
	conn     *grpc.ClientConn // sends types.RevisionsHeader, as merlin's own clients do
	original *grpc.ClientConn // does not, as the original Merlin's clients do not
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startAPI runs the gRPC API on loopback against a real etcd of the kind.
func startAPI(t *testing.T, kind etcdtest.Kind) *apiEnv { return startAPIWith(t, kind, nil) }

func startAPIWith(t *testing.T, kind etcdtest.Kind, set func(*api.Server)) *apiEnv {
	t.Helper()
	return startAPILogged(t, kind, quietLogger(), set)
}

func startAPILogged(t *testing.T, kind etcdtest.Kind, log *slog.Logger, set func(*api.Server)) *apiEnv {
	t.Helper()
	etcd := etcdtest.Start(t, kind)
	kv := etcd.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	st := store.NewStore(kv, prefix)
	srv := api.NewServer(st, log)
	if set != nil {
		set(srv)
	}
	g := api.NewGRPCServer(srv, api.GRPCOptions{})
	go store.NewProber(st, 5*time.Second, quietLogger(), srv.SetServing).Run(ctx)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(func() { cancel(); g.Stop() })
	conn, err := grpc.NewClient(lis.Addr().String(), append(types.WithRevisions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// The original Merlin's clients send no revisions header.
	old, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close() })
	return &apiEnv{etcd: etcd, kv: kv, client: types.NewMerlinClient(conn), conn: conn, original: old}
}

func forEachEtcd(t *testing.T, fn func(t *testing.T, env *apiEnv)) {
	for _, kind := range etcdtest.Kinds {
		t.Run(string(kind), func(t *testing.T) { fn(t, startAPI(t, kind)) })
	}
}

var tcpService, server = testobj.TCPService, testobj.Server

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// noErr(t)(call()) fails the test if the call failed.
func noErr(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// dump is every key and value under the prefix and etcd's revision.
func dump(t *testing.T, kv *clientv3.Client) (map[string]string, int64) {
	t.Helper()
	resp, err := kv.Get(ctxT(t), prefix+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range resp.Kvs {
		m[string(e.Key)] = string(e.Value)
	}
	return m, resp.Header.Revision
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
}

func TestAPIRejectsBadInput(t *testing.T) {
	forEachEtcd(t, func(t *testing.T, env *apiEnv) {
		ctx := ctxT(t)
		c := env.client
		noErr(t)(c.CreateService(ctx, tcpService("web", "198.18.0.10", 80)))
		noErr(t)(c.CreateServer(ctx, server("web", "198.19.0.2", 8080, 1)))
		fw := &types.VirtualService{Id: "fw", Key: &types.VirtualService_Key{Fwmark: 7}, Config: &types.VirtualService_Config{Scheduler: "rr"}}
		noErr(t)(c.CreateService(ctx, fw))
		before, rev := dump(t, env.kv)

		svc := func(mod func(*types.VirtualService)) *types.VirtualService {
			s := tcpService("new", "198.18.0.20", 80)
			mod(s)
			return s
		}
		srv := func(mod func(*types.RealServer)) *types.RealServer {
			s := server("web", "198.19.0.3", 8080, 1)
			mod(s)
			return s
		}
		hc := func(endpoint string, period, timeout time.Duration, up, down uint32) *types.RealServer_HealthCheck {
			h := &types.RealServer_HealthCheck{Endpoint: wrapperspb.String(endpoint), UpThreshold: up, DownThreshold: down}
			if period != 0 {
				h.Period = durationpb.New(period)
			}
			if timeout != 0 {
				h.Timeout = durationpb.New(timeout)
			}
			return h
		}
		cases := []struct {
			name  string
			call  func() error
			code  codes.Code
			field string
		}{
			{"no id", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Id = "" }))
				return err
			}, codes.InvalidArgument, "id"},
			{"id with slash", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Id = "a/b" }))
				return err
			}, codes.InvalidArgument, "id"},
			{"id too long", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Id = strings.Repeat("x", 64) }))
				return err
			}, codes.InvalidArgument, "id"},
			{"no key", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key = nil }))
				return err
			}, codes.InvalidArgument, "key"},
			{"bad address", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Ip = "198.18.0.300" }))
				return err
			}, codes.InvalidArgument, "key.ip"},
			{"port 0", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Port = 0 }))
				return err
			}, codes.InvalidArgument, "key.port"},
			{"port 65536", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Port = 65536 }))
				return err
			}, codes.InvalidArgument, "key.port"},
			{"no protocol", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Protocol = 0 }))
				return err
			}, codes.InvalidArgument, "key.protocol"},
			{"unknown protocol", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Protocol = 9 }))
				return err
			}, codes.InvalidArgument, "key.protocol"},
			{"fwmark with address", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Fwmark = 3 }))
				return err
			}, codes.InvalidArgument, "key.fwmark"},
			{"no scheduler", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Config.Scheduler = "" }))
				return err
			}, codes.InvalidArgument, "config.scheduler"},
			{"unknown scheduler", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Config.Scheduler = "fastest" }))
				return err
			}, codes.InvalidArgument, "config.scheduler"},
			{"flag of another scheduler", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Config.Flags = []string{"sh-port"} }))
				return err
			}, codes.InvalidArgument, "config.flags"},
			{"unknown flag", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Config.Flags = []string{"flag-9"} }))
				return err
			}, codes.InvalidArgument, "config.flags"},
			{"netmask without persistence", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Config.PersistenceNetmask = wrapperspb.UInt32(24) }))
				return err
			}, codes.InvalidArgument, "config.persistence_netmask"},
			{"netmask too long", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) {
					s.Config.PersistenceTimeout, s.Config.PersistenceNetmask = wrapperspb.UInt32(60), wrapperspb.UInt32(33)
				}))
				return err
			}, codes.InvalidArgument, "config.persistence_netmask"},
			{"revision on create", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Revision = 5 }))
				return err
			}, codes.InvalidArgument, "revision"},
			{"same id", func() error { _, err := c.CreateService(ctx, tcpService("web", "198.18.0.99", 80)); return err }, codes.AlreadyExists, ""},
			{"same VIP", func() error { _, err := c.CreateService(ctx, tcpService("other", "198.18.0.10", 80)); return err }, codes.AlreadyExists, ""},
			{"same fwmark", func() error {
				_, err := c.CreateService(ctx, &types.VirtualService{Id: "fw2", Key: &types.VirtualService_Key{Fwmark: 7, Family: types.AddressFamily_IPV4}, Config: &types.VirtualService_Config{Scheduler: "rr"}})
				return err
			}, codes.AlreadyExists, ""},
			{"update missing service", func() error { _, err := c.UpdateService(ctx, tcpService("nope", "198.18.0.1", 80)); return err }, codes.NotFound, ""},
			{"update to bad scheduler", func() error {
				_, err := c.UpdateService(ctx, &types.VirtualService{Id: "web", Config: &types.VirtualService_Config{Scheduler: "xx"}})
				return err
			}, codes.InvalidArgument, "config.scheduler"},
			{"delete missing service", func() error {
				_, err := c.DeleteService(ctx, wrapperspb.String("nope"))
				return err
			}, codes.NotFound, ""},
			{"server of missing service", func() error { _, err := c.CreateServer(ctx, server("nope", "198.19.0.2", 80, 1)); return err }, codes.NotFound, ""},
			{"server bad address", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.Key.Ip = "host" }))
				return err
			}, codes.InvalidArgument, "key.ip"},
			{"server port 0", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.Key.Port = 0 }))
				return err
			}, codes.InvalidArgument, "key.port"},
			{"server port too big", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.Key.Port = 70000 }))
				return err
			}, codes.InvalidArgument, "key.port"},
			{"weight too big", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.Config.Weight = wrapperspb.UInt32(65536) }))
				return err
			}, codes.InvalidArgument, "config.weight"},
			{"no forward", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.Config.Forward = 0 }))
				return err
			}, codes.InvalidArgument, "config.forward"},
			{"lower above upper", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) {
					s.Config.UpperThreshold, s.Config.LowerThreshold = wrapperspb.UInt32(10), wrapperspb.UInt32(20)
				}))
				return err
			}, codes.InvalidArgument, "config.lower_threshold"},
			{"IPv6 server NAT to IPv4 VIP", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.Key.Ip = "2001:db8::2" }))
				return err
			}, codes.InvalidArgument, "key.ip"},
			{"tunnel options with masq", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.Config.TunnelType = types.TunnelType_GUE }))
				return err
			}, codes.InvalidArgument, "config.tunnel_type"},
			{"GUE without port", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) {
					s.Config.Forward, s.Config.TunnelType = types.ForwardMethod_TUNNEL, types.TunnelType_GUE
				}))
				return err
			}, codes.InvalidArgument, "config.tunnel_port"},
			{"health endpoint scheme", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.HealthCheck = hc("ftp://:21/", time.Second, time.Second, 1, 1) }))
				return err
			}, codes.InvalidArgument, "health_check.endpoint"},
			{"health endpoint port", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.HealthCheck = hc("http:///health", time.Second, time.Second, 1, 1) }))
				return err
			}, codes.InvalidArgument, "health_check.endpoint"},
			{"health without period", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.HealthCheck = hc("http://:80/", 0, time.Second, 1, 1) }))
				return err
			}, codes.InvalidArgument, "health_check.period"},
			{"health host header with a line break", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) {
					s.HealthCheck = hc("http://:80/", time.Second, time.Second, 1, 1)
					s.HealthCheck.Host = "a.example\r\nX-Injected: 1"
				}))
				return err
			}, codes.InvalidArgument, "health_check.host"},
			{"health up threshold", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.HealthCheck = hc("http://:80/", time.Second, time.Second, 0, 1) }))
				return err
			}, codes.InvalidArgument, "health_check.up_threshold"},
			{"same server", func() error { _, err := c.CreateServer(ctx, server("web", "198.19.0.2", 8080, 3)); return err }, codes.AlreadyExists, ""},
			{"update missing server", func() error { _, err := c.UpdateServer(ctx, server("web", "198.19.0.9", 80, 3)); return err }, codes.NotFound, ""},
			{"delete missing server", func() error { _, err := c.DeleteServer(ctx, server("web", "198.19.0.9", 80, 3)); return err }, codes.NotFound, ""},
			{"fwmark server port 0 of IPv6 to IPv4 mark", func() error {
				_, err := c.CreateServer(ctx, server("fw", "2001:db8::5", 0, 1))
				return err
			}, codes.InvalidArgument, "key.ip"},
		}
		huge := strings.Repeat("x", 1400<<10)
		cases = append(cases, []struct {
			name  string
			call  func() error
			code  codes.Code
			field string
		}{
			{"1.4 MB udp_send", func() error {
				_, err := c.UpdateServer(ctx, srv(func(s *types.RealServer) {
					s.Key.Ip, s.Key.Port = "198.19.0.2", 8080
					s.HealthCheck = &types.RealServer_HealthCheck{UdpSend: huge}
				}))
				return err
			}, codes.InvalidArgument, "health_check.udp_send"},
			{"1.4 MB id", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Id = huge }))
				return err
			}, codes.InvalidArgument, "id"},
			{"1 ns period", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.HealthCheck = hc("tcp://:80", time.Nanosecond, time.Nanosecond, 1, 1) }))
				return err
			}, codes.InvalidArgument, "health_check.period"},
			{"loopback VIP", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Ip = "127.0.0.1" }))
				return err
			}, codes.InvalidArgument, "key.ip"},
			{"broadcast VIP", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Ip = "255.255.255.255" }))
				return err
			}, codes.InvalidArgument, "key.ip"},
			{"multicast VIP", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Ip = "ff02::1" }))
				return err
			}, codes.InvalidArgument, "key.ip"},
			{"unspecified VIP", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Ip = "0.0.0.0" }))
				return err
			}, codes.InvalidArgument, "key.ip"},
			{"VIP with a zone", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Key.Ip = "2001:db8::1%eth0" }))
				return err
			}, codes.InvalidArgument, "key.ip"},
			{"server with a zone", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.Key.Ip = "198.19.0.3%eth0" }))
				return err
			}, codes.InvalidArgument, "key.ip"},
			{"persistence above ipvsadm's", func() error {
				_, err := c.CreateService(ctx, svc(func(s *types.VirtualService) { s.Config.PersistenceTimeout = wrapperspb.UInt32(2678401) }))
				return err
			}, codes.InvalidArgument, "config.persistence_timeout"},
			{"invalid UTF-8 id", func() error {
				return env.conn.Invoke(ctx, "/types.Merlin/CreateService", []byte("\x0a\x04web\xff"), &emptypb.Empty{}, grpc.ForceCodec(rawCodec{}))
			}, codes.InvalidArgument, ""},
			{"truncated body", func() error {
				return env.conn.Invoke(ctx, "/types.Merlin/CreateServer", []byte("\x0a\x10ab"), &emptypb.Empty{}, grpc.ForceCodec(rawCodec{}))
			}, codes.InvalidArgument, ""},
			{"undecodable watch request", func() error {
				stream, err := env.conn.NewStream(ctx, &types.Merlin_ServiceDesc.Streams[0], "/types.Merlin/Watch", grpc.ForceCodec(rawCodec{}))
				if err != nil {
					return err
				}
				if err := stream.SendMsg([]byte("\x08\xff")); err != nil {
					return err
				}
				_ = stream.CloseSend()
				return stream.RecvMsg(&types.WatchEvent{})
			}, codes.InvalidArgument, ""},
			{"NUL in a health path", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.HealthCheck = hc("http://:80/a\x00b", time.Second, time.Second, 1, 1) }))
				return err
			}, codes.InvalidArgument, "health_check.endpoint"},
			{"control character in a host", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) {
					s.HealthCheck = hc("http://:80/", time.Second, time.Second, 1, 1)
					s.HealthCheck.Host = "a\x1bexample"
				}))
				return err
			}, codes.InvalidArgument, "health_check.host"},
			{"negative revision", func() error {
				_, err := c.DeleteServiceAtRevision(ctx, &types.DeleteServiceRequest{Id: "web", Revision: -1})
				return err
			}, codes.InvalidArgument, "revision"},
			{"future revision", func() error {
				_, err := c.DeleteServiceAtRevision(ctx, &types.DeleteServiceRequest{Id: "web", Revision: 1 << 40})
				return err
			}, codes.Aborted, ""},
			{"threshold of a thousand", func() error {
				_, err := c.CreateServer(ctx, srv(func(s *types.RealServer) { s.HealthCheck = hc("tcp://:80", time.Second, time.Second, 1000, 1) }))
				return err
			}, codes.InvalidArgument, "health_check.up_threshold"},
		}...)
		for _, tc := range cases {
			err := tc.call()
			if len(status.Convert(err).Message()) > 400 {
				t.Errorf("%s: a %d-byte error message", tc.name, len(status.Convert(err).Message()))
			}
			st := status.Convert(err)
			if st.Code() != tc.code {
				t.Errorf("%s: got %v, want %v", tc.name, err, tc.code)
				continue
			}
			if tc.field == "" {
				continue
			}
			var got string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 {
					got = br.FieldViolations[0].Field
				}
			}
			if got != tc.field || !strings.Contains(st.Message(), tc.field) {
				t.Errorf("%s: field %q in %q, want %q", tc.name, got, st.Message(), tc.field)
			}
		}
		after, revAfter := dump(t, env.kv)
		if revAfter != rev || !equalMaps(before, after) {
			t.Errorf("bad input changed etcd: revision %d → %d", rev, revAfter)
		}
	})
}

// rawCodec sends request bytes as they are: what a broken or hostile
// client can put on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { return proto.Unmarshal(data, v.(proto.Message)) }
func (rawCodec) Name() string                       { return "proto" }

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

func TestAPIRaceForOneVIP(t *testing.T) {
	forEachEtcd(t, func(t *testing.T, env *apiEnv) {
		ctx := ctxT(t)
		const clients = 8
		var wg sync.WaitGroup
		errs := make([]error, clients)
		for i := range clients {
			wg.Go(func() {
				_, errs[i] = env.client.CreateService(ctx, tcpService(fmt.Sprintf("svc%d", i), "198.18.1.1", 443))
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch status.Code(err) {
			case codes.OK:
				won++
			case codes.AlreadyExists:
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}
		if won != 1 {
			t.Fatalf("%d clients created the same VIP, want exactly 1", won)
		}
		list, err := env.client.List(ctx, &emptypb.Empty{})
		if err != nil || len(list.Items) != 1 {
			t.Fatalf("list after race: %v, %v", list, err)
		}
	})
}

func TestAPIRevisions(t *testing.T) {
	forEachEtcd(t, func(t *testing.T, env *apiEnv) {
		ctx, c := ctxT(t), env.client
		noErr(t)(c.CreateService(ctx, tcpService("web", "198.18.0.10", 80)))
		noErr(t)(c.CreateServer(ctx, server("web", "198.19.0.2", 80, 1)))
		item, err := c.GetService(ctx, wrapperspb.String("web"))
		if err != nil {
			t.Fatal(err)
		}
		read := item.Service
		if read.Revision == 0 || item.Servers[0].Revision == 0 {
			t.Fatalf("objects carry no revision: %v", item)
		}
		// Someone else changes the service after we read it.
		noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "web", Config: &types.VirtualService_Config{Scheduler: "rr"}}))
		stale := proto.Clone(read).(*types.VirtualService)
		stale.Config.Scheduler = "lc"
		_, err = c.UpdateService(ctx, stale)
		wantCode(t, err, codes.Aborted)
		_, err = c.DeleteServiceAtRevision(ctx, &types.DeleteServiceRequest{Id: "web", Revision: read.Revision})
		wantCode(t, err, codes.Aborted)

		// A fresh read may replace the whole service, key included.
		item, _ = c.GetService(ctx, wrapperspb.String("web"))
		next := proto.Clone(item.Service).(*types.VirtualService)
		next.Key.Ip, next.Config.Scheduler = "198.18.0.11", "sh"
		next.Config.Flags = []string{"sh-port"}
		noErr(t)(c.UpdateService(ctx, next))
		got, _ := c.GetService(ctx, wrapperspb.String("web"))
		if got.Service.Key.Ip != "198.18.0.11" || got.Service.Config.Scheduler != "sh" {
			t.Fatalf("replace did not apply: %v", got.Service)
		}
		// The old VIP is free again, the new one is taken.
		noErr(t)(c.CreateService(ctx, tcpService("old-vip", "198.18.0.10", 80)))
		_, err = c.CreateService(ctx, tcpService("new-vip", "198.18.0.11", 80))
		wantCode(t, err, codes.AlreadyExists)

		// A merge that names a key moves the service too, never OK while
		// ignoring it; a key another service holds, or one its servers
		// cannot follow, is refused and nothing changes.
		noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "::ffff:198.18.0.12", Port: 8080, Protocol: types.Protocol_TCP}}))
		if got, _ := c.GetService(ctx, wrapperspb.String("web")); got.Service.Key.Ip != "198.18.0.12" || got.Service.Key.Port != 8080 || got.Service.Config.Scheduler != "sh" {
			t.Fatalf("merge with a key: %v", got.Service)
		}
		noErr(t)(c.CreateService(ctx, tcpService("new-vip", "198.18.0.11", 80)))
		_, before := dump(t, env.kv)
		_, err = c.UpdateService(ctx, &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.10", Port: 80, Protocol: types.Protocol_TCP}})
		wantCode(t, err, codes.AlreadyExists)
		_, err = c.UpdateService(ctx, &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "2001:db8::1", Port: 80, Protocol: types.Protocol_TCP}})
		wantCode(t, err, codes.InvalidArgument)
		if _, after := dump(t, env.kv); after != before {
			t.Fatalf("refused key changes wrote to etcd: revision %d → %d", before, after)
		}
		_, err = c.UpdateService(ctx, &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.11", Port: 80, Protocol: types.Protocol_TCP}, Config: &types.VirtualService_Config{Scheduler: "sh"}})
		wantCode(t, err, codes.AlreadyExists)
		noErr(t)(c.DeleteService(ctx, wrapperspb.String("new-vip")))
		noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.11", Port: 80, Protocol: types.Protocol_TCP}}))
		noErr(t)(c.CreateService(ctx, tcpService("reuse", "198.18.0.12", 8080)))

		srv := proto.Clone(got.Servers[0]).(*types.RealServer)
		noErr(t)(c.UpdateServer(ctx, server("web", "198.19.0.2", 80, 7)))
		srv.Config.Weight = wrapperspb.UInt32(9)
		_, err = c.UpdateServer(ctx, srv)
		wantCode(t, err, codes.Aborted)
		_, err = c.DeleteServer(ctx, srv)
		wantCode(t, err, codes.Aborted)

		cur, _ := c.GetService(ctx, wrapperspb.String("web"))
		noErr(t)(c.DeleteServiceAtRevision(ctx, &types.DeleteServiceRequest{Id: "web", Revision: cur.Service.Revision}))
	})
}

func TestAPIServiceDeleteRemovesServers(t *testing.T) {
	forEachEtcd(t, func(t *testing.T, env *apiEnv) {
		ctx, c := ctxT(t), env.client
		for _, id := range []string{"a", "a2"} {
			ip := map[string]string{"a": "198.18.0.1", "a2": "198.18.0.2"}[id]
			noErr(t)(c.CreateService(ctx, tcpService(id, ip, 80)))
			for i := range 3 {
				noErr(t)(c.CreateServer(ctx, server(id, fmt.Sprintf("198.19.%d.%d", len(id), i+1), 80, 1)))
			}
		}
		// The prefix of "a" must not reach the servers of "a2".
		a, err := c.GetService(ctx, wrapperspb.String("a"))
		if err != nil || len(a.Servers) != 3 {
			t.Fatalf("service a: %v %v", a, err)
		}
		for _, s := range a.Servers {
			if s.ServiceID != "a" || !strings.HasPrefix(s.Key.Ip, "198.19.1.") {
				t.Fatalf("service a lists %v", s)
			}
		}
		noErr(t)(c.DeleteService(ctx, wrapperspb.String("a")))
		keys, _ := dump(t, env.kv)
		for k := range keys {
			if strings.Contains(k, "/servers/a/") || strings.HasSuffix(k, "/services/a") || strings.Contains(k, "198.18.0.1:") {
				t.Errorf("left behind after delete: %s", k)
			}
		}
		a2, err := c.GetService(ctx, wrapperspb.String("a2"))
		if err != nil || len(a2.Servers) != 3 {
			t.Fatalf("service a2 lost servers: %v %v", a2, err)
		}
		_, err = c.GetService(ctx, wrapperspb.String("a"))
		wantCode(t, err, codes.NotFound)
		// Its VIP can be claimed again.
		noErr(t)(c.CreateService(ctx, tcpService("b", "198.18.0.1", 80)))
	})
}

func TestAPIExtendedFieldsRoundTrip(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx, c := ctxT(t), env.client
	v6 := &types.VirtualService{
		Id:  "v6",
		Key: &types.VirtualService_Key{Ip: "2001:DB8::0:10", Port: 53, Protocol: types.Protocol_UDP},
		Config: &types.VirtualService_Config{Scheduler: "MH", Flags: []string{"mh-port", "mh-fallback"},
			PersistenceTimeout: wrapperspb.UInt32(600), PersistenceNetmask: wrapperspb.UInt32(64), OnePacket: wrapperspb.Bool(true)},
		Defaults: &types.VirtualService_ServerDefaults{Forward: types.ForwardMethod_TUNNEL,
			HealthCheck: &types.RealServer_HealthCheck{Period: durationpb.New(2 * time.Second), Timeout: durationpb.New(time.Second), UpThreshold: 2, DownThreshold: 3}},
	}
	noErr(t)(c.CreateService(ctx, v6))
	sctp := &types.VirtualService{Id: "sctp", Key: &types.VirtualService_Key{Ip: "198.18.0.5", Port: 3868, Protocol: types.Protocol_SCTP}, Config: &types.VirtualService_Config{Scheduler: "rr", Flags: []string{"persistent"}}}
	noErr(t)(c.CreateService(ctx, sctp))
	fw := &types.VirtualService{Id: "fw6", Key: &types.VirtualService_Key{Fwmark: 9, Family: types.AddressFamily_IPV6}, Config: &types.VirtualService_Config{Scheduler: "wlc"}}
	noErr(t)(c.CreateService(ctx, fw))
	// An IPv4 server behind an IPv6 VIP through a GUE tunnel, inheriting the forward method and check timing.
	gue := &types.RealServer{ServiceID: "v6", Key: &types.RealServer_Key{Ip: "198.19.0.7", Port: 53},
		Config:      &types.RealServer_Config{TunnelType: types.TunnelType_GUE, TunnelPort: 6080, TunnelChecksum: true, UpperThreshold: wrapperspb.UInt32(100), LowerThreshold: wrapperspb.UInt32(50)},
		HealthCheck: &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("http://:8080/health")}}
	noErr(t)(c.CreateServer(ctx, gue))
	noErr(t)(c.CreateServer(ctx, &types.RealServer{ServiceID: "fw6", Key: &types.RealServer_Key{Ip: "2001:db8::7"}, Config: &types.RealServer_Config{Forward: types.ForwardMethod_ROUTE}}))

	item, err := c.GetService(ctx, wrapperspb.String("v6"))
	if err != nil {
		t.Fatal(err)
	}
	got := item.Service
	if got.Key.Ip != "2001:db8::10" || got.Key.Family != types.AddressFamily_IPV6 || got.Config.Scheduler != "mh" {
		t.Errorf("key not canonical: %v", got.Key)
	}
	if want := []string{"persistent", "one-packet", "mh-fallback", "mh-port"}; strings.Join(got.Config.Flags, ",") != strings.Join(want, ",") {
		t.Errorf("flags %v, want %v", got.Config.Flags, want)
	}
	if got.Config.PersistenceTimeout.GetValue() != 600 || got.Config.PersistenceNetmask.GetValue() != 64 || !got.Config.OnePacket.GetValue() {
		t.Errorf("persistence/one-packet lost: %v", got.Config)
	}
	if s := item.Servers[0]; s.Config.TunnelPort != 6080 || s.Config.Weight.GetValue() != 1 || s.Config.LowerThreshold.GetValue() != 50 {
		t.Errorf("server fields lost: %v", s)
	}
	sc, _ := c.GetService(ctx, wrapperspb.String("sctp"))
	if sc.Service.Config.PersistenceTimeout.GetValue() != model.DefaultPersistenceTimeout {
		t.Errorf("persistent flag without timeout: %v", sc.Service.Config)
	}
	f, _ := c.GetService(ctx, wrapperspb.String("fw6"))
	if len(f.Servers) != 1 || f.Servers[0].Key.Port != 0 {
		t.Errorf("fwmark server: %v", f)
	}
	// Merge semantics of the original: setting only flags replaces the
	// scheduler flags; persistence and one-packet, which have fields of
	// their own (and which an original client cannot express), stay.
	noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "v6", Config: &types.VirtualService_Config{Flags: []string{"flag-1"}}}))
	item, _ = c.GetService(ctx, wrapperspb.String("v6"))
	if strings.Join(item.Service.Config.Flags, ",") != "persistent,one-packet,flag-1" {
		t.Errorf("flags after merge: %v", item.Service.Config)
	}
	if cfg := item.Service.Config; cfg.PersistenceTimeout.GetValue() != 600 || cfg.PersistenceNetmask.GetValue() != 64 || !cfg.OnePacket.GetValue() || cfg.Scheduler != "mh" {
		t.Errorf("merge lost or kept the wrong fields: %v", item.Service.Config)
	}
	// Turned off through their fields.
	noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "v6", Config: &types.VirtualService_Config{PersistenceTimeout: wrapperspb.UInt32(0), OnePacket: wrapperspb.Bool(false)}}))
	item, _ = c.GetService(ctx, wrapperspb.String("v6"))
	if cfg := item.Service.Config; strings.Join(cfg.Flags, ",") != "flag-1" || cfg.PersistenceTimeout != nil || cfg.OnePacket.GetValue() {
		t.Errorf("persistence and one-packet not off: %v", cfg)
	}
	// A change that would make a server invalid is refused: the GUE server needs tunnel forwarding.
	_, err = c.UpdateService(ctx, &types.VirtualService{Id: "v6", Defaults: &types.VirtualService_ServerDefaults{Forward: types.ForwardMethod_MASQ}})
	wantCode(t, err, codes.InvalidArgument)
}

func TestAPIWatch(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx, c := ctxT(t), env.client
	noErr(t)(c.CreateService(ctx, tcpService("web", "198.18.0.10", 80)))
	noErr(t)(c.CreateServer(ctx, server("web", "198.19.0.2", 80, 1)))
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Watch(wctx, &types.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *types.WatchEvent {
		t.Helper()
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	if ev := next(); ev.Type != types.WatchEvent_SNAPSHOT || ev.Service.GetId() != "web" {
		t.Fatalf("first event %v", ev)
	}
	if ev := next(); ev.Type != types.WatchEvent_SNAPSHOT || ev.Server.GetKey().GetIp() != "198.19.0.2" {
		t.Fatalf("second event %v", ev)
	}
	synced := next()
	if synced.Type != types.WatchEvent_SYNCED || synced.Revision == 0 {
		t.Fatalf("third event %v", synced)
	}
	// Node status (health as each node sees it) streams too.
	st := store.NewStore(env.kv, prefix)
	lease, err := st.GrantNodeLease(ctx, ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutNodeStatus(ctx, lease, &types.NodeStatus{Node: "lb1", Servers: []*types.ServerHealth{{ServiceId: "web", Server: "198.19.0.2:80", Up: false, LastError: "refused"}}}); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Type != types.WatchEvent_PUT || ev.Node.GetNode() != "lb1" || ev.Node.Servers[0].LastError != "refused" {
		t.Fatalf("node status event %v", ev)
	}
	noErr(t)(c.UpdateServer(ctx, server("web", "198.19.0.2", 80, 5)))
	put := next()
	if put.Type != types.WatchEvent_PUT || put.Server.GetConfig().GetWeight().GetValue() != 5 || put.Revision <= synced.Revision {
		t.Fatalf("update event %v", put)
	}
	noErr(t)(c.DeleteService(ctx, wrapperspb.String("web")))
	seen := map[string]bool{}
	for range 2 {
		ev := next()
		if ev.Type != types.WatchEvent_DELETE {
			t.Fatalf("want deletes, got %v", ev)
		}
		if ev.Service != nil {
			seen["service "+ev.Service.Id] = true
		} else {
			seen["server "+ev.Server.ServiceID+" "+ev.Server.Key.Ip] = true
		}
	}
	if !seen["service web"] || !seen["server web 198.19.0.2"] {
		t.Fatalf("deletes seen: %v", seen)
	}
	cancel()

	// Resuming from a revision replays what happened since.
	resumed, err := c.Watch(ctx, &types.WatchRequest{FromRevision: put.Revision})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := resumed.Recv()
	if err != nil || ev.Type != types.WatchEvent_PUT || ev.Revision != put.Revision {
		t.Fatalf("resumed watch: %v %v", ev, err)
	}
	// A compacted revision is OutOfRange.
	cur, _ := env.kv.Get(ctx, "x")
	if _, err := env.kv.Compact(ctx, cur.Header.Revision); err != nil {
		t.Fatal(err)
	}
	old, err := c.Watch(ctx, &types.WatchRequest{FromRevision: 2})
	if err == nil {
		_, err = old.Recv()
	}
	wantCode(t, err, codes.OutOfRange)
}

func TestAPIGRPCHealth(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx := ctxT(t)
	// Health is registered next to Merlin.
	err := env.conn.Invoke(ctx, "/grpc.health.v1.Health/Check", &emptypb.Empty{}, &emptypb.Empty{})
	if err != nil && status.Code(err) != codes.OK && !errors.Is(err, io.EOF) {
		// An Empty request is a valid HealthCheckRequest (service ""); the
		// reply decodes into Empty by skipping its field.
		t.Fatalf("health check: %v", err)
	}
}

func TestStoreImport(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	st := store.NewStore(etcd.Client(t), prefix)
	ctx := ctxT(t)
	var items []*types.ListResponse_Item
	for i := range 50 {
		item := &types.ListResponse_Item{Service: tcpService(fmt.Sprintf("s%d", i), fmt.Sprintf("198.18.1.%d", i+1), 80)}
		for j := range 10 {
			item.Servers = append(item.Servers, server("", fmt.Sprintf("198.19.%d.%d", i, j+1), 80, 1))
		}
		items = append(items, item)
	}
	n, err := st.Import(ctx, items)
	if err != nil || n != 50 {
		t.Fatalf("import: %d, %v", n, err)
	}
	list, err := st.List(ctx)
	if err != nil || len(list.Items) != 50 || len(list.Items[0].Servers) != 10 || len(list.InvalidKeys) != 0 {
		t.Fatalf("after import: %d items, %v", len(list.Items), err)
	}
	// Importing a VIP that exists fails and adds nothing.
	_, rev := dump(t, etcd.Client(t))
	if _, err := st.Import(ctx, []*types.ListResponse_Item{{Service: tcpService("new", "198.18.1.1", 80)}}); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("import of a taken VIP: %v", err)
	}
	if _, err := st.Import(ctx, []*types.ListResponse_Item{{Service: tcpService("bad", "198.18.2.1", 0)}}); err == nil || !strings.Contains(err.Error(), "services[0]: key.port") {
		t.Fatalf("import of a bad service: %v", err)
	}
	if _, after := dump(t, etcd.Client(t)); after != rev {
		t.Fatalf("failed imports changed etcd")
	}
}

// A field sent with presence replaces the stored value on a merge, even
// when it is zero, false or empty; what is not sent stays.
func TestAPIMergeClearsPresentFields(t *testing.T) {
	forEachEtcd(t, func(t *testing.T, env *apiEnv) {
		ctx, c := ctxT(t), env.client
		svc := tcpService("web", "198.18.0.1", 80)
		svc.Config.PersistenceTimeout, svc.Config.OnePacket = wrapperspb.UInt32(600), wrapperspb.Bool(true)
		svc.Defaults = &types.VirtualService_ServerDefaults{Forward: types.ForwardMethod_MASQ, HealthCheck: &types.RealServer_HealthCheck{
			Endpoint: wrapperspb.String("tcp://:8080"), Period: durationpb.New(2 * time.Second), Timeout: durationpb.New(time.Second),
			UpThreshold: 2, DownThreshold: 2, SlowStart: durationpb.New(10 * time.Second)}}
		noErr(t)(c.CreateService(ctx, svc))
		srv := server("web", "198.19.0.1", 80, 5)
		srv.Config.UpperThreshold, srv.Config.LowerThreshold = wrapperspb.UInt32(100), wrapperspb.UInt32(10)
		srv.HealthCheck = &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("tcp://:9000")}
		noErr(t)(c.CreateServer(ctx, srv))

		noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "web", Config: &types.VirtualService_Config{PersistenceTimeout: wrapperspb.UInt32(0)}}))
		noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "web", Config: &types.VirtualService_Config{OnePacket: wrapperspb.Bool(false)}}))
		noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "web", Defaults: &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{
			Endpoint: wrapperspb.String(""), SlowStart: durationpb.New(0)}}}))
		noErr(t)(c.UpdateServer(ctx, &types.RealServer{ServiceID: "web", Key: srv.Key, Config: &types.RealServer_Config{
			UpperThreshold: wrapperspb.UInt32(0), LowerThreshold: wrapperspb.UInt32(0), Weight: wrapperspb.UInt32(0)}}))
		noErr(t)(c.UpdateServer(ctx, &types.RealServer{ServiceID: "web", Key: srv.Key, HealthCheck: &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("")}}))

		item, err := c.GetService(ctx, wrapperspb.String("web"))
		if err != nil {
			t.Fatal(err)
		}
		cfg, hc := item.Service.Config, item.Service.Defaults.GetHealthCheck()
		if cfg.PersistenceTimeout.GetValue() != 0 || cfg.OnePacket.GetValue() || len(cfg.Flags) != 0 || cfg.Scheduler != "wrr" {
			t.Errorf("service config after clearing merges: %v", cfg)
		}
		if hc.GetEndpoint().GetValue() != "" || hc.GetSlowStart().AsDuration() != 0 || hc.GetPeriod().AsDuration() != 2*time.Second || hc.GetUpThreshold() != 2 {
			t.Errorf("default health check after a clearing merge: %v", hc)
		}
		s := item.Servers[0]
		if s.Config.GetUpperThreshold().GetValue() != 0 || s.Config.GetLowerThreshold().GetValue() != 0 || s.Config.GetWeight().GetValue() != 0 ||
			s.Config.Forward != types.ForwardMethod_MASQ || s.HealthCheck.GetEndpoint().GetValue() != "" {
			t.Errorf("server after clearing merges: %v", s)
		}
	})
}

// With etcd gone, a request fails while its client still listens, with
// Unavailable naming etcd, instead of running into the client's deadline.
func TestAPIEtcdUnreachableSaysSo(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	noErr(t)(env.client.CreateService(ctxT(t), tcpService("web", "198.18.0.1", 80)))
	env.etcd.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := env.client.List(ctx, &emptypb.Empty{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "etcd (") || ctx.Err() != nil {
		t.Fatalf("List with etcd stopped: %v (client context: %v)", err, ctx.Err())
	}
}

// A health check whose timeout is longer than its period, which the
// original Merlin accepted, is accepted: the next probe of a check waits
// for the one before it.
func TestAPIAcceptsTimeoutAbovePeriod(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx, c := ctxT(t), env.client
	noErr(t)(c.CreateService(ctx, tcpService("web", "198.18.0.1", 80)))
	srv := server("web", "198.19.0.1", 80, 1)
	srv.HealthCheck = &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("http://:80/"), Period: durationpb.New(time.Second),
		Timeout: durationpb.New(3 * time.Second), UpThreshold: 1, DownThreshold: 1}
	noErr(t)(c.CreateServer(ctx, srv))
}

// A drain names a running node, is stored for the watchers (the nodes),
// and is bounded; a service's BGP options merge like its other fields.
func TestAPIDrainNodeAndAnnounce(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx, c := ctxT(t), env.client
	_, err := c.DrainNode(ctx, &types.DrainNodeRequest{Node: "lb1"})
	wantCode(t, err, codes.NotFound)
	st := store.NewStore(env.kv, prefix)
	lease, err := st.GrantNodeLease(ctx, ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutNodeStatus(ctx, lease, &types.NodeStatus{Node: "lb1"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.DrainNode(ctx, &types.DrainNodeRequest{Node: "lb1", WithdrawAfter: durationpb.New(2 * time.Hour)})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.DrainNode(ctx, &types.DrainNodeRequest{Node: "../x"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.DrainNode(ctx, &types.DrainNodeRequest{Node: "lb1", Ramp: durationpb.New(-time.Second)})
	if wantCode(t, err, codes.InvalidArgument); !strings.Contains(err.Error(), "ramp") {
		t.Fatalf("a negative ramp: %v (want the field named)", err)
	}
	noErr(t)(c.DrainNode(ctx, &types.DrainNodeRequest{Node: "lb1", WithdrawAfter: durationpb.New(time.Minute), Ramp: durationpb.New(2 * time.Minute)}))
	state, err := st.ListState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := state.Drains["lb1"]; !ok || d.WithdrawAfter != time.Minute || d.Ramp != 2*time.Minute || time.Since(d.Since) > time.Minute {
		t.Fatalf("drains in the desired state: %v", state.Drains)
	}
	noErr(t)(c.DrainNode(ctx, &types.DrainNodeRequest{Node: "lb1", Undrain: true}))
	if state, err = st.ListState(ctx); err != nil || len(state.Drains) != 0 {
		t.Fatalf("after undrain: %v, %v", state.Drains, err)
	}

	svc := tcpService("web", "198.18.0.1", 80)
	svc.Announce = &types.Announce{Communities: []string{"65000:1"}}
	noErr(t)(c.CreateService(ctx, svc))
	// A merge without a revision: the communities given replace the list,
	// the local preference is added, always stays.
	_, err = types.NewMerlinClient(env.original).UpdateService(ctx, &types.VirtualService{Id: "web", Announce: &types.Announce{Communities: []string{"65000:2", "65000:3"}, LocalPreference: wrapperspb.UInt32(200)}})
	noErr(t)(nil, err)
	got, err := c.GetService(ctx, wrapperspb.String("web"))
	if err != nil {
		t.Fatal(err)
	}
	if a := got.Service.Announce; !slices.Equal(a.GetCommunities(), []string{"65000:2", "65000:3"}) || a.GetLocalPreference().GetValue() != 200 {
		t.Fatalf("announce after the merge: %v", a)
	}
	// link_bandwidth merges as a present field; explicit false is kept.
	for _, on := range []bool{true, false} {
		_, err = c.UpdateService(ctx, &types.VirtualService{Id: "web", Announce: &types.Announce{LinkBandwidth: wrapperspb.Bool(on)}})
		noErr(t)(nil, err)
		if got, err = c.GetService(ctx, wrapperspb.String("web")); err != nil || got.Service.Announce.GetLinkBandwidth() == nil || got.Service.Announce.GetLinkBandwidth().Value != on ||
			got.Service.Announce.GetLocalPreference().GetValue() != 200 {
			t.Fatalf("announce after link_bandwidth %v: %v, %v", on, got.GetService().GetAnnounce(), err)
		}
	}
	bad := tcpService("bad", "198.18.0.2", 80)
	bad.Announce = &types.Announce{Communities: []string{"65536:0"}}
	_, err = c.CreateService(ctx, bad)
	wantCode(t, err, codes.InvalidArgument)
}

// A Watch client that stops reading is cut off once the events waiting
// for it pass the buffer: it reads what was sent, then ResourceExhausted
// with the revision to resume from.
func TestAPIWatchCutsOffSlowClient(t *testing.T) {
	env := startAPIWith(t, etcdtest.Embedded, func(s *api.Server) { s.SetWatchBuffer(64 << 10) })
	ctx, c := ctxT(t), env.client
	// A fixed 64 KiB window (no growth by bandwidth estimation), as a
	// client that does not read ends up with.
	slow, err := grpc.NewClient(env.conn.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	stream, err := types.NewMerlinClient(slow).Watch(ctx, &types.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := stream.Recv(); err != nil || ev.Type != types.WatchEvent_SYNCED {
		t.Fatalf("first event %v, %v", ev, err)
	}
	// The client reads nothing while 400 services of ~1.2 KB are written
	// (far more than gRPC's flow-control window and the 64 KiB buffer).
	for i := range 400 {
		svc := tcpService(fmt.Sprintf("s%d", i), fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250), 80)
		svc.Defaults = &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{UdpSend: strings.Repeat("x", 1000)}}
		noErr(t)(c.CreateService(ctx, svc))
	}
	n := 0
	for {
		_, err := stream.Recv()
		if err != nil {
			st := status.Convert(err)
			if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "watch again from revision") {
				t.Fatalf("after %d events: %v, want ResourceExhausted with a revision", n, err)
			}
			break
		}
		if n++; n == 400 {
			t.Fatal("all 400 events arrived: the slow client was not cut off")
		}
	}
}

// A store nearing its quota takes only deletes, before etcd's own alarm
// refuses every write; a raised alarm is seen and named.
func TestAPIStoreQuota(t *testing.T) {
	for _, kind := range etcdtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			etcd := etcdtest.StartWithQuota(t, kind, 8<<20)
			kv := etcd.Client(t)
			st := store.NewStore(kv, prefix)
			st.SetQuota(8 << 20)
			srv := api.NewServer(st, quietLogger())
			g := api.NewGRPCServer(srv, api.GRPCOptions{})
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go func() { _ = g.Serve(lis) }()
			t.Cleanup(g.Stop)
			conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			c, ctx := types.NewMerlinClient(conn), ctxT(t)
			noErr(t)(c.CreateService(ctx, tcpService("web", "198.18.0.1", 80)))
			noErr(t)(c.CreateService(ctx, tcpService("web2", "198.18.0.2", 80)))
			noErr(t)(c.CreateServer(ctx, server("web", "198.19.0.2", 80, 1)))

			// Past 90% of the quota the store knows (here: as if it were
			// the database's size now), the API refuses to add but deletes.
			if err := st.Check(ctx); err != nil {
				t.Fatal(err)
			}
			size, _ := st.Usage()
			st.SetQuota(size)
			_, err = c.CreateService(ctx, tcpService("more", "198.18.0.3", 80))
			wantCode(t, err, codes.ResourceExhausted)
			if !strings.Contains(status.Convert(err).Message(), "only deletes are accepted") {
				t.Errorf("refusal %q", status.Convert(err).Message())
			}
			noErr(t)(c.DeleteService(ctx, wrapperspb.String("web2")))

			// A fast writer does not overshoot between two looks at etcd:
			// each write counts. With 20 KiB left below the high-water
			// mark, creates are refused before 20 KiB more are written.
			if err := st.Check(ctx); err != nil {
				t.Fatal(err)
			}
			size, _ = st.Usage()
			st.SetQuota(int64(float64(size+20<<10) / 0.9))
			created := 0
			for ; created < 1000; created++ {
				svc := tcpService(fmt.Sprintf("fill%d", created), fmt.Sprintf("198.18.%d.%d", 10+created/250, 1+created%250), 80)
				svc.Config.Scheduler, svc.Config.Flags = "sh", []string{"sh-port", "sh-fallback"}
				if _, err := c.CreateService(ctx, svc); err != nil {
					wantCode(t, err, codes.ResourceExhausted)
					break
				}
			}
			if created == 0 || created >= 1000 {
				t.Fatalf("%d creates went through before the guard refused", created)
			}
			st.SetQuota(8 << 20)

			// Someone else fills etcd until it raises NOSPACE: merlin sees
			// the alarm and names it.
			junk := strings.Repeat("j", 256<<10)
			var putErr error
			for i := 0; i < 160 && putErr == nil; i++ {
				_, putErr = kv.Put(ctx, fmt.Sprintf("/junk/%d", i), junk)
			}
			if putErr == nil {
				t.Fatal("etcd took 40 MiB under an 8 MiB quota")
			}
			err = st.Check(ctx)
			if !errors.Is(err, store.ErrEtcdAlarm) || !strings.Contains(err.Error(), "NOSPACE") {
				t.Fatalf("Check after the alarm: %v", err)
			}
			_, err = c.CreateService(ctx, tcpService("more", "198.18.0.3", 80))
			wantCode(t, err, codes.ResourceExhausted)
			if st := status.Convert(err); !strings.Contains(st.Message(), "NOSPACE") {
				t.Errorf("refusal %q does not name the alarm", st.Message())
			}
			// The way out (README: "When etcd is full") starts with
			// deleting through merlin: deletes go through a full etcd, by
			// the single calls and by ApplyChanges.
			noErr(t)(c.DeleteServer(ctx, server("web", "198.19.0.2", 80, 1)))
			noErr(t)(c.ApplyChanges(ctx, &types.ApplyChangesRequest{Changes: []*types.Change{{Change: &types.Change_DeleteService{DeleteService: &types.DeleteServiceRequest{Id: "fill0"}}}}}))
			noErr(t)(c.DeleteService(ctx, wrapperspb.String("web")))
			kvs, _ := dump(t, kv)
			for _, k := range []string{prefix + "/services/web", prefix + "/services/fill0", prefix + "/vips/tcp/198.18.0.1:80"} {
				if _, ok := kvs[k]; ok {
					t.Errorf("%s still stored after its delete went through", k)
				}
			}
		})
	}
}

// Confirmations name exactly what is held; revisions from the future or
// below zero are the client's error, never Internal.
func TestAPIConfirmAndRevisions(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx, c := ctxT(t), env.client
	_, err := c.ConfirmDeletions(ctx, &types.ConfirmDeletionsRequest{Revision: 5})
	wantCode(t, err, codes.FailedPrecondition)
	st := store.NewStore(env.kv, prefix)
	lease, err := st.GrantNodeLease(ctx, ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutNodeStatus(ctx, lease, &types.NodeStatus{Node: "lb1", DeletionGuard: &types.DeletionGuard{Held: true, Revision: 42, Deletions: 9, Owned: 10}}); err != nil {
		t.Fatal(err)
	}
	for _, rev := range []int64{41, 43, 1 << 40} {
		_, err = c.ConfirmDeletions(ctx, &types.ConfirmDeletionsRequest{Revision: rev})
		wantCode(t, err, codes.FailedPrecondition)
		if !strings.Contains(status.Convert(err).Message(), "lb1 at 42") {
			t.Errorf("refusal of %d does not say what is held: %v", rev, err)
		}
	}
	_, err = c.ConfirmDeletions(ctx, &types.ConfirmDeletionsRequest{Revision: -1})
	wantCode(t, err, codes.InvalidArgument)
	noErr(t)(c.ConfirmDeletions(ctx, &types.ConfirmDeletionsRequest{Revision: 42}))

	_, err = c.DeleteServiceAtRevision(ctx, &types.DeleteServiceRequest{Id: "web", Revision: -3})
	wantCode(t, err, codes.InvalidArgument)
	stream, err := c.Watch(ctx, &types.WatchRequest{FromRevision: 1 << 40})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.OutOfRange)
}

// An IPv4-mapped IPv6 address names the same server on every call.
func TestAPIMappedAddressesAreOneServer(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx, c := ctxT(t), env.client
	noErr(t)(c.CreateService(ctx, tcpService("web", "198.18.0.1", 80)))
	noErr(t)(c.CreateServer(ctx, server("web", "::ffff:198.19.0.2", 8080, 1)))
	noErr(t)(types.NewMerlinClient(env.original).UpdateServer(ctx, server("web", "::ffff:198.19.0.2", 8080, 7)))
	got, err := c.GetService(ctx, wrapperspb.String("web"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Servers) != 1 || got.Servers[0].Key.Ip != "198.19.0.2" || got.Servers[0].Config.Weight.GetValue() != 7 {
		t.Fatalf("servers %v", got.Servers)
	}
	noErr(t)(c.DeleteServer(ctx, server("web", "::ffff:198.19.0.2", 8080, 0)))
	if got, err = c.GetService(ctx, wrapperspb.String("web")); err != nil || len(got.Servers) != 0 {
		t.Fatalf("after delete: %v, %v", got.GetServers(), err)
	}
}

// ApplyChanges: swaps, address-family moves with servers and VIP moves in
// one transaction; a batch with one bad change writes nothing and names
// the change; deleting a service of any size is one change.
func TestAPIApplyChanges(t *testing.T) {
	forEachEtcd(t, func(t *testing.T, env *apiEnv) {
		ctx, c := ctxT(t), env.client
		noErr(t)(c.CreateService(ctx, tcpService("a", "198.18.0.1", 80)))
		noErr(t)(c.CreateService(ctx, tcpService("b", "198.18.0.2", 80)))
		noErr(t)(c.CreateServer(ctx, server("a", "198.19.0.2", 80, 1)))
		apply := func(changes ...*types.Change) error {
			_, err := c.ApplyChanges(ctx, &types.ApplyChangesRequest{Changes: changes})
			return err
		}
		key := func(ip string) *types.VirtualService_Key {
			return &types.VirtualService_Key{Ip: ip, Port: 80, Protocol: types.Protocol_TCP}
		}
		upd := func(id, ip string) *types.Change {
			return &types.Change{Change: &types.Change_UpdateService{UpdateService: &types.VirtualService{Id: id, Key: key(ip)}}}
		}
		create := func(id, ip string) *types.Change {
			return &types.Change{Change: &types.Change_CreateService{CreateService: tcpService(id, ip, 80)}}
		}

		// A swap of two VIPs: one transaction, one revision.
		_, before := dump(t, env.kv)
		noErr(t)(nil, apply(upd("a", "198.18.0.2"), upd("b", "198.18.0.1")))
		if _, after := dump(t, env.kv); after != before+1 {
			t.Fatalf("swap took revisions %d → %d, want one transaction", before, after)
		}
		if got, _ := c.GetService(ctx, wrapperspb.String("a")); got.Service.Key.Ip != "198.18.0.2" {
			t.Fatalf("after the swap a is at %s", got.Service.Key.Ip)
		}
		// IPv4 → IPv6 with its servers.
		noErr(t)(nil, apply(
			&types.Change{Change: &types.Change_DeleteServer{DeleteServer: server("a", "198.19.0.2", 80, 0)}},
			upd("a", "2001:db8::1"),
			&types.Change{Change: &types.Change_CreateServer{CreateServer: server("a", "2001:db8::2", 80, 1)}}))
		if got, _ := c.GetService(ctx, wrapperspb.String("a")); got.Service.Key.Ip != "2001:db8::1" || len(got.Servers) != 1 || got.Servers[0].Key.Ip != "2001:db8::2" {
			t.Fatalf("after the move: %v", got)
		}
		// A VIP handed to a new service while the old one goes.
		noErr(t)(nil, apply(&types.Change{Change: &types.Change_DeleteService{DeleteService: &types.DeleteServiceRequest{Id: "b"}}}, create("c", "198.18.0.1")))
		checkStored(t, ctx, env.kv, c)

		// One bad change: nothing written, the change named.
		_, before = dump(t, env.kv)
		err := apply(create("d", "198.18.0.3"), create("e", "198.18.0.4"), create("f", "198.18.0.1"))
		wantCode(t, err, codes.AlreadyExists)
		if !strings.Contains(status.Convert(err).Message(), "changes[2]") {
			t.Errorf("error %q does not name the change", status.Convert(err).Message())
		}
		bad := create("g", "198.18.0.5")
		bad.GetCreateService().Config.Scheduler = "nope"
		err = apply(create("d", "198.18.0.3"), bad)
		wantCode(t, err, codes.InvalidArgument)
		if !strings.Contains(status.Convert(err).Message(), "changes[1].config.scheduler") {
			t.Errorf("error %q does not name the field", status.Convert(err).Message())
		}
		stale := &types.Change{Change: &types.Change_UpdateService{UpdateService: &types.VirtualService{Id: "c", Revision: 1, Config: &types.VirtualService_Config{Scheduler: "rr"}}}}
		wantCode(t, apply(create("d", "198.18.0.3"), stale), codes.Aborted)
		if _, after := dump(t, env.kv); after != before {
			t.Fatalf("refused batches wrote: revision %d → %d", before, after)
		}

		// Limits: 33 changes. Deleting a service is a few etcd operations
		// whatever its size (its servers go as one prefix): one of 200
		// servers goes in one change, and through the single call.
		var many []*types.Change
		for i := range 33 {
			many = append(many, create(fmt.Sprintf("m%d", i), fmt.Sprintf("198.18.1.%d", i+1)))
		}
		wantCode(t, apply(many...), codes.InvalidArgument)
		for _, id := range []string{"c", "big"} {
			if id != "c" {
				noErr(t)(c.CreateService(ctx, tcpService(id, "198.18.3.1", 80)))
			}
			for i := range 200 {
				noErr(t)(c.CreateServer(ctx, server(id, fmt.Sprintf("198.19.%d.%d", 1+i/250, 1+i%250), 80, 1)))
			}
		}
		noErr(t)(nil, apply(&types.Change{Change: &types.Change_DeleteService{DeleteService: &types.DeleteServiceRequest{Id: "c"}}}))
		noErr(t)(c.DeleteService(ctx, wrapperspb.String("big")))
		kvs, _ := dump(t, env.kv)
		for k := range kvs {
			if strings.Contains(k, "/servers/c/") || strings.Contains(k, "/servers/big/") || strings.HasSuffix(k, "/services/big") {
				t.Fatalf("%s left after its service was deleted", k)
			}
		}
		checkStored(t, ctx, env.kv, c)
	})
}

// A handler that panics answers Internal; the server keeps serving.
func TestAPIRecoversFromAPanic(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	srv := api.NewServer(store.NewStore(etcd.Client(t), prefix), quietLogger())
	g := api.NewGRPCServer(srv, api.GRPCOptions{})
	g.RegisterService(&grpc.ServiceDesc{ServiceName: "test.Boom", HandlerType: (*any)(nil), Methods: []grpc.MethodDesc{{MethodName: "Boom",
		Handler: func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			return interceptor(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/test.Boom/Boom"}, func(context.Context, any) (any, error) { panic("boom") })
		}}}}, struct{}{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Invoke(ctxT(t), "/test.Boom/Boom", &emptypb.Empty{}, &emptypb.Empty{})
	wantCode(t, err, codes.Internal)
	if _, err := types.NewMerlinClient(conn).List(ctxT(t), &emptypb.Empty{}); err != nil {
		t.Fatalf("after the panic: %v", err)
	}
}

// A field merlin does not know is never stored: a service sent with a
// 1 MB unknown field is created without it (it used to be stored as it
// was, past every limit of the known fields).
func TestAPIStoresNothingUnknown(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx := ctxT(t)
	known, err := proto.Marshal(tcpService("web", "198.18.0.1", 80))
	if err != nil {
		t.Fatal(err)
	}
	unknown := protowire.AppendTag(nil, 9999, protowire.BytesType)
	unknown = protowire.AppendBytes(unknown, bytes.Repeat([]byte{'x'}, 1<<20))
	if err := env.conn.Invoke(ctx, "/types.Merlin/CreateService", append(known, unknown...), &emptypb.Empty{}, grpc.ForceCodec(rawCodec{})); err != nil {
		t.Fatal(err)
	}
	kvs, _ := dump(t, env.kv)
	value, ok := kvs[prefix+"/services/web"]
	if !ok || len(value) > 1024 {
		t.Fatalf("stored service: %d bytes (present %v), want it without the unknown field", len(value), ok)
	}
	var stored types.VirtualService
	if err := proto.Unmarshal([]byte(value), &stored); err != nil || len(stored.ProtoReflect().GetUnknown()) != 0 {
		t.Fatalf("stored service %v (%v) carries unknown fields", &stored, err)
	}
}

// Every attempt to change something is one audit line, even a request
// that does not decode or that fails; reads are not audited.
func TestAPIAuditsEveryWriteAttempt(t *testing.T) {
	var logged testenv.Buffer
	env := startAPILogged(t, etcdtest.Embedded, slog.New(slog.NewTextHandler(&logged, nil)), nil)
	ctx := ctxT(t)
	err := env.conn.Invoke(ctx, "/types.Merlin/CreateService", []byte("\x0a\x04web\xff"), &emptypb.Empty{}, grpc.ForceCodec(rawCodec{}))
	wantCode(t, err, codes.InvalidArgument)
	_, err = env.client.DeleteService(ctx, wrapperspb.String("nosuch"))
	wantCode(t, err, codes.NotFound)
	noErr(t)(env.client.List(ctx, &emptypb.Empty{}))
	var audit []string
	for _, line := range strings.Split(logged.String(), "\n") {
		if strings.Contains(line, "msg=audit") {
			audit = append(audit, line)
		}
	}
	if len(audit) != 2 || !strings.Contains(audit[0], "method=/types.Merlin/CreateService identity=anonymous") ||
		!strings.Contains(audit[0], "code=InvalidArgument") || !strings.Contains(audit[0], "(undecodable: ") ||
		!strings.Contains(audit[1], "method=/types.Merlin/DeleteService") || !strings.Contains(audit[1], "code=NotFound") {
		t.Fatalf("audit lines:\n%s", strings.Join(audit, "\n"))
	}
}

// serveAPI runs srv with opts on loopback; the client sends revisions.
func serveAPI(t *testing.T, srv *api.Server, opts api.GRPCOptions, dial ...grpc.DialOption) (types.MerlinClient, string) {
	t.Helper()
	g := api.NewGRPCServer(srv, opts)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return dialTest(t, lis.Addr().String()), lis.Addr().String()
}

func dialTest(t *testing.T, addr string, opts ...grpc.DialOption) types.MerlinClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, append(append(types.WithRevisions(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20))), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return types.NewMerlinClient(conn)
}

// A table larger than one message: List says so and names ListPage, which
// pages through it at one revision; meradm's pages equal what List gave
// while it fitted.
func TestAPIListPages(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	c, _ := serveAPI(t, api.NewServer(store.NewStore(etcd.Client(t), prefix), quietLogger()), api.GRPCOptions{MaxMessageBytes: 64 << 10})
	ctx := ctxT(t)
	for i := range 40 {
		id := fmt.Sprintf("svc%02d", i)
		noErr(t)(c.CreateService(ctx, tcpService(id, fmt.Sprintf("198.18.0.%d", i+1), 80)))
		for j := range 5 {
			noErr(t)(c.CreateServer(ctx, server(id, fmt.Sprintf("198.19.%d.%d", i, j+1), 80, 1)))
		}
	}
	whole, err := c.List(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	var paged []*types.ListResponse_Item
	req := &types.ListPageRequest{MaxBytes: 2000}
	pages := 0
	for {
		page, err := c.ListPage(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		paged = append(paged, page.Items...)
		if pages == 1 {
			// Written after the first page: not in the listing, which
			// stays at the first page's revision.
			noErr(t)(c.CreateService(ctx, tcpService("svc99", "198.18.1.99", 80)))
		}
		if page.NextAfterId == "" {
			break
		}
		if page.Revision != whole.Revision {
			t.Fatalf("page %d at revision %d, not the first page's %d", pages, page.Revision, whole.Revision)
		}
		req = &types.ListPageRequest{AfterId: page.NextAfterId, Revision: page.Revision, MaxBytes: 2000}
	}
	if pages < 5 || !proto.Equal(&types.ListResponse{Items: paged}, &types.ListResponse{Items: whole.Items}) {
		t.Fatalf("%d pages of %d services, List has %d", pages, len(paged), len(whole.Items))
	}
	for i := 40; len(whole.Items) > 0; i++ { // grow past 64 KiB
		id := fmt.Sprintf("big%03d", i)
		noErr(t)(c.CreateService(ctx, tcpService(id, fmt.Sprintf("198.18.%d.%d", 2+i/250, 1+i%250), 80)))
		for j := range 5 {
			noErr(t)(c.CreateServer(ctx, server(id, fmt.Sprintf("198.19.%d.%d", i%250, 100+j+5*(i/250)), 80, 1)))
		}
		if _, err = c.List(ctx, &emptypb.Empty{}); err != nil {
			break
		}
	}
	wantCode(t, err, codes.ResourceExhausted)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "ListPage") || !strings.Contains(msg, "-max-message-bytes") {
		t.Errorf("List of a table too large: %q", msg)
	}
	_, err = c.ListPage(ctx, &types.ListPageRequest{AfterId: "../x"})
	wantCode(t, err, codes.InvalidArgument)
}

// Watch streams are bounded: a node serves DefaultMaxWatchers at once, and
// one that reads nothing of its snapshot is cut off, so that clients that
// never read cannot pile up copies of the table.
func TestAPIWatchLimits(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	var logged testenv.Buffer
	srv := api.NewServer(store.NewStore(etcd.Client(t), prefix), slog.New(slog.NewTextHandler(&logged, nil)))
	srv.SetWatchBuffer(16 << 10)
	srv.SetSnapshotStall(300 * time.Millisecond)
	c, addr := serveAPI(t, srv, api.GRPCOptions{})
	ctx := ctxT(t)
	var communities, large []string
	for i := range 32 {
		communities = append(communities, fmt.Sprintf("65000:%d", i))
		large = append(large, fmt.Sprintf("65000:%d:%d", i, i))
	}
	for i := range 600 { // a snapshot well over the buffer and gRPC's windows
		id := fmt.Sprintf("s%03d", i)
		svc := tcpService(id, fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250), 80)
		svc.Announce = &types.Announce{Communities: communities, LargeCommunities: large} // ~900 bytes each
		noErr(t)(c.CreateService(ctx, svc))
	}
	// A watcher that never reads is cut off once it has read nothing of
	// its snapshot for the stall.
	// (Small windows: gRPC's default lets a client buffer megabytes unread.)
	slow := dialTest(t, addr, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	stuck, err := slow.Watch(ctx, &types.WatchRequest{FromRevision: 0})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the stuck watcher cut off", func() bool { return strings.Contains(logged.String(), "read nothing of its snapshot") })
	for err == nil {
		_, err = stuck.Recv()
	}
	wantCode(t, err, codes.ResourceExhausted)
	// DefaultMaxWatchers streams that read: the next one is refused.
	for i := range api.DefaultMaxWatchers {
		w, err := c.Watch(ctx, &types.WatchRequest{FromRevision: 0})
		if err != nil {
			t.Fatal(err)
		}
		for ev, err := w.Recv(); ev.GetType() != types.WatchEvent_SYNCED; ev, err = w.Recv() {
			if err != nil {
				t.Fatalf("watcher %d: %v", i, err)
			}
		}
	}
	w, err := c.Watch(ctx, &types.WatchRequest{FromRevision: 0})
	if err == nil {
		_, err = w.Recv()
	}
	wantCode(t, err, codes.ResourceExhausted)
}

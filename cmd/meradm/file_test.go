package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// fullObjects set every field of the API's services and servers between
// them (a fwmark key and an address key cannot share one service).
func fullObjects() *types.ListResponse {
	hc := &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("https://:8443/ready"), Period: durationpb.New(2 * time.Second),
		Timeout: durationpb.New(time.Second), UpThreshold: 2, DownThreshold: 3, Method: "HEAD", Host: "web.example", ExpectStatus: "200,204",
		ExpectBody: "ok", TlsServerName: "web.example", TlsVerify: true, SlowStart: durationpb.New(30 * time.Second), Startup: types.RealServer_DOWN}
	udp := &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("udp://:53"), UdpSend: "ping", UdpExpect: "pong", ThroughVip: wrapperspb.Bool(true)}
	grpcCheck := &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("grpc://:9090"), GrpcService: "web"}
	exec := &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("exec:"), Command: "check-web --fast"}
	web := &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.10", Port: 80, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: "sh", Flags: []string{"sh-port", "persistent"}, PersistenceTimeout: wrapperspb.UInt32(600),
			PersistenceNetmask: wrapperspb.UInt32(24), PersistenceEngine: "sip"},
		Defaults: &types.VirtualService_ServerDefaults{Forward: types.ForwardMethod_MASQ, HealthCheck: hc},
		Announce: &types.Announce{Always: true, Communities: []string{"65000:1"}, LargeCommunities: []string{"65000:1:2"}, LocalPreference: wrapperspb.UInt32(200), LinkBandwidth: wrapperspb.Bool(false)},
		PassiveHealth: &types.PassiveHealth{Enabled: wrapperspb.Bool(true), Window: durationpb.New(30 * time.Second),
			MinAttempts: wrapperspb.UInt32(20), MaxFailedPercent: wrapperspb.UInt32(50)},
		HealthyThreshold: &types.HealthyThreshold{MinServers: wrapperspb.UInt32(2), MinPercent: wrapperspb.UInt32(50), HoldDown: durationpb.New(20 * time.Second),
			Action: types.BelowThresholdAction_SORRY, SorryServers: []*types.RealServer_Key{{Ip: "198.19.9.9", Port: 8080}}, SorryForward: types.ForwardMethod_MASQ}}
	marked := &types.VirtualService{Id: "marked", Key: &types.VirtualService_Key{Fwmark: 7, Family: types.AddressFamily_IPV6},
		Config: &types.VirtualService_Config{Scheduler: "rr", OnePacket: wrapperspb.Bool(true)}}
	srv := func(svc, addr string, port uint32, c *types.RealServer_Config, h *types.RealServer_HealthCheck) *types.RealServer {
		return &types.RealServer{ServiceID: svc, Key: &types.RealServer_Key{Ip: addr, Port: port}, Config: c, HealthCheck: h}
	}
	return &types.ListResponse{Items: []*types.ListResponse_Item{
		{Service: web, Servers: []*types.RealServer{
			srv("web", "198.19.0.2", 8080, &types.RealServer_Config{Weight: wrapperspb.UInt32(10), Forward: types.ForwardMethod_TUNNEL,
				UpperThreshold: wrapperspb.UInt32(100), LowerThreshold: wrapperspb.UInt32(10), TunnelType: types.TunnelType_GUE,
				TunnelPort: 6080, TunnelChecksum: true, TunnelRemoteChecksum: true}, udp),
			srv("web", "198.19.0.3", 8080, &types.RealServer_Config{Weight: wrapperspb.UInt32(1)}, grpcCheck),
			srv("web", "198.19.0.4", 8080, &types.RealServer_Config{Weight: wrapperspb.UInt32(1)}, exec)}},
		{Service: marked, Servers: []*types.RealServer{srv("marked", "2001:db8::5", 0, &types.RealServer_Config{Forward: types.ForwardMethod_ROUTE}, nil)}},
	}}
}

// covered records every field set anywhere in m (by full name).
func covered(m protoreflect.Message, seen map[protoreflect.FullName]bool) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		seen[fd.FullName()] = true
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				covered(v.List().Get(i).Message(), seen)
			}
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			covered(v.Message(), seen)
		}
		return true
	})
}

// every lists the fields of md and of the merlin messages under it.
func every(md protoreflect.MessageDescriptor, out map[protoreflect.FullName]bool) {
	for i := range md.Fields().Len() {
		fd := md.Fields().Get(i)
		if fd.Name() == "revision" {
			continue // lives in etcd, not in the file
		}
		out[fd.FullName()] = true
		if m := fd.Message(); m != nil && m.ParentFile().Package() == "types" && !out[m.FullName()+".visited"] {
			out[m.FullName()+".visited"] = true
			every(m, out)
		}
	}
}

// TestFileCarriesEveryField: a field added to the API later must be set
// by fullObjects and carried by export and apply, or this fails.
func TestFileCarriesEveryField(t *testing.T) {
	list := fullObjects()
	seen := map[protoreflect.FullName]bool{}
	for _, it := range list.Items {
		covered(it.Service.ProtoReflect(), seen)
		for _, s := range it.Servers {
			covered(s.ProtoReflect(), seen)
		}
	}
	want := map[protoreflect.FullName]bool{}
	every((&types.VirtualService{}).ProtoReflect().Descriptor(), want)
	every((&types.RealServer{}).ProtoReflect().Descriptor(), want)
	for name := range want {
		if len(name) > 8 && name[len(name)-8:] == ".visited" {
			continue
		}
		if !seen[name] {
			t.Errorf("field %s is set by no object of fullObjects: set it there and carry it in the file format (export.go, file.go)", name)
		}
	}
	raw, err := yaml.Marshal(toFile(list))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "all.yaml")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	read, err := readFile(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	for _, it := range list.Items {
		svc, err := model.NormalizeService(it.Service)
		if err != nil {
			t.Fatal(err)
		}
		got := read[svc.Id]
		if got == nil || !proto.Equal(got.service, svc) {
			t.Errorf("service %s after export and apply:\n%v\nwant\n%v", svc.Id, got.service, svc)
			continue
		}
		for _, s := range it.Servers {
			want, err := model.NormalizeServer(s, svc)
			if err != nil {
				t.Fatal(err)
			}
			if g := got.servers[model.ServerKeyString(want.Key)]; !proto.Equal(g, want) {
				t.Errorf("server %s after export and apply:\n%v\nwant\n%v", model.ServerName(want), g, want)
			}
		}
	}
}

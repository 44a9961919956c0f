package store_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// FuzzDecodeValues feeds arbitrary etcd values to the decoders: they must
// never panic, and whatever they accept must validate again unchanged.
func FuzzDecodeValues(f *testing.F) {
	svc := tcpService("web", "198.18.0.10", 80)
	sb, _ := proto.Marshal(svc)
	rb, _ := proto.Marshal(server("web", "198.19.0.2", 8080, 3))
	f.Add(sb, rb)
	f.Add([]byte{0xff}, []byte{})
	f.Fuzz(func(t *testing.T, svcValue, srvValue []byte) {
		s, err := store.DecodeService("/merlin/services/web", svcValue, 7)
		if err != nil {
			return
		}
		again, err := model.NormalizeService(s)
		if err != nil || !proto.Equal(again, s) {
			t.Fatalf("accepted service is not stable: %v %v", s, err)
		}
		srv, err := store.DecodeServer("/merlin/servers/web/198.19.0.2:8080", srvValue, 8, s)
		if err != nil {
			return
		}
		if again, err := model.NormalizeServer(srv, s); err != nil || !proto.Equal(again, srv) {
			t.Fatalf("accepted server is not stable: %v %v", srv, err)
		}
	})
}

// FuzzValidate builds services and servers from arbitrary fields: the
// validator must never panic, and anything it accepts is canonical.
func FuzzValidate(f *testing.F) {
	f.Add("web", "198.18.0.10", uint32(80), int32(1), uint32(0), "wrr", "flag-1", uint32(0), "198.19.0.2", uint32(80), uint32(1), int32(3), uint32(0), uint32(0))
	f.Add("v6", "2001:db8::1", uint32(53), int32(2), uint32(0), "sh", "sh-port", uint32(64), "198.19.0.2", uint32(53), uint32(1), int32(2), uint32(10), uint32(20))
	f.Add("fw", "", uint32(0), int32(0), uint32(5), "rr", "persistent", uint32(24), "2001:db8::2", uint32(0), uint32(70000), int32(1), uint32(0), uint32(0))
	f.Fuzz(func(t *testing.T, id, ip string, port uint32, proto_ int32, fwmark uint32, sched, flag string, netmask uint32,
		srvIP string, srvPort, weight uint32, forward int32, upper, lower uint32) {
		in := &types.VirtualService{Id: id,
			Key:    &types.VirtualService_Key{Ip: ip, Port: port, Protocol: types.Protocol(proto_), Fwmark: fwmark},
			Config: &types.VirtualService_Config{Scheduler: sched, Flags: []string{flag}}}
		if netmask != 0 {
			in.Config.PersistenceNetmask = wrap(netmask)
		}
		svc, err := model.NormalizeService(in)
		if err != nil {
			return
		}
		if again, err := model.NormalizeService(svc); err != nil || !proto.Equal(again, svc) {
			t.Fatalf("not idempotent: %v → %v (%v)", svc, again, err)
		}
		srv := &types.RealServer{ServiceID: id, Key: &types.RealServer_Key{Ip: srvIP, Port: srvPort},
			Config: &types.RealServer_Config{Weight: wrap(weight), Forward: types.ForwardMethod(forward), UpperThreshold: wrap(upper), LowerThreshold: wrap(lower)}}
		n, err := model.NormalizeServer(srv, svc)
		if err != nil {
			return
		}
		if again, err := model.NormalizeServer(n, svc); err != nil || !proto.Equal(again, n) {
			t.Fatalf("server not idempotent: %v → %v (%v)", n, again, err)
		}
	})
}

func wrap(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }

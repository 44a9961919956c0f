package store

import (
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// A field added to a server's configuration or health check and not
// compared would let servers that differ in it share one message: every
// field of either, changed alone, must make them differ.
func TestSameCoversEveryField(t *testing.T) {
	same := func(a, b proto.Message) bool {
		switch a := a.(type) {
		case *types.RealServer_Config:
			return sameConfig(a, b.(*types.RealServer_Config))
		case *types.RealServer_HealthCheck:
			return sameHealthCheck(a, b.(*types.RealServer_HealthCheck))
		}
		t.Fatalf("no comparison for %T", a)
		return false
	}
	for _, base := range []proto.Message{&types.RealServer_Config{}, &types.RealServer_HealthCheck{}} {
		populate(t, base.ProtoReflect())
		if !same(base, proto.Clone(base)) {
			t.Fatalf("%T: not the same as its copy", base)
		}
		fields := base.ProtoReflect().Descriptor().Fields()
		for i := range fields.Len() {
			for _, c := range changes(t, base, fields.Get(i)) {
				if same(base, c) || same(c, base) {
					t.Errorf("%T: %s changed, still the same", base, fields.Get(i).Name())
				}
			}
		}
		unknown := proto.Clone(base)
		unknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
		if same(base, unknown) {
			t.Errorf("%T: an unknown field added, still the same", base)
		}
	}
}

// populate sets every field of m, nested messages too.
func populate(t *testing.T, m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.Kind() == protoreflect.MessageKind {
			populate(t, m.Mutable(fd).Message())
			continue
		}
		m.Set(fd, changedScalar(t, fd, m.Get(fd)))
	}
}

// changes are copies of base with field fd changed (a message field also
// cleared).
func changes(t *testing.T, base proto.Message, fd protoreflect.FieldDescriptor) []proto.Message {
	c := proto.Clone(base)
	m := c.ProtoReflect()
	if fd.Kind() != protoreflect.MessageKind {
		m.Set(fd, changedScalar(t, fd, m.Get(fd)))
		return []proto.Message{c}
	}
	m.Clear(fd)
	inner := proto.Clone(base)
	populateChanged(t, inner.ProtoReflect().Mutable(fd).Message())
	return []proto.Message{c, inner}
}

// populateChanged changes every field of a nested message.
func populateChanged(t *testing.T, m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		m.Set(fields.Get(i), changedScalar(t, fields.Get(i), m.Get(fields.Get(i))))
	}
}

func changedScalar(t *testing.T, fd protoreflect.FieldDescriptor, v protoreflect.Value) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(!v.Bool())
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(v.Enum() + 1)
	case protoreflect.Uint32Kind:
		return protoreflect.ValueOfUint32(uint32(v.Uint()) + 1)
	case protoreflect.Int32Kind:
		return protoreflect.ValueOfInt32(int32(v.Int()) + 1)
	case protoreflect.Int64Kind:
		return protoreflect.ValueOfInt64(v.Int() + 1)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(v.String() + "x")
	}
	t.Fatalf("field %s of kind %s: the test cannot change it (compare it in share.go, then teach the test)", fd.FullName(), fd.Kind())
	return v
}

// Servers sharing parts still each read as their own value decodes, through
// puts and changes in any order.
func TestSharedPartsReadAsWritten(t *testing.T) {
	s := NewState("/m", 1)
	rev := int64(1)
	put := func(key string, m proto.Message) {
		rev++
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		s.ApplyEvent(&clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: b, ModRevision: rev}})
	}
	svc := svcAt("web", "198.18.0.1", "wlc")
	server := func(ip string, weight uint32, endpoint string) *types.RealServer {
		srv := &types.RealServer{ServiceID: "web", Key: &types.RealServer_Key{Ip: ip, Port: 80},
			Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(weight), Forward: types.ForwardMethod_MASQ}}
		if endpoint != "" {
			srv.HealthCheck = &types.RealServer_HealthCheck{Endpoint: wrapperspb.String(endpoint), Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second), UpThreshold: 1, DownThreshold: 2}
		}
		return srv
	}
	written := map[string]*types.RealServer{}
	write := func(srv *types.RealServer) {
		written[model.ServerKeyString(srv.Key)] = srv
		put(s.serverKey("web", srv.Key), srv)
	}
	write(server("198.19.0.1", 1, "tcp://:80"))
	write(server("198.19.0.2", 1, "tcp://:80"))
	put(s.serviceKey("web"), svc) // servers before their service: rebuilt together
	write(server("198.19.0.3", 2, "http://:80/"))
	write(server("198.19.0.4", 1, ""))
	write(server("198.19.0.1", 5, "tcp://:81")) // changes what it shared
	svc.Config.Scheduler = "rr"
	put(s.serviceKey("web"), svc)
	write(server("198.19.0.5", 1, "tcp://:80"))

	ss := s.Services["web"]
	if ss == nil || len(ss.Servers) != len(written) {
		t.Fatalf("state %+v, invalid %v: want %d servers", ss, s.Invalid, len(written))
	}
	for key, w := range written {
		value, err := proto.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		want, err := DecodeServer(s.serverKey("web", w.Key), value, 0, ss.Service)
		if err != nil {
			t.Fatal(err)
		}
		got := proto.Clone(ss.Servers[key]).(*types.RealServer)
		got.Revision = 0
		if !proto.Equal(got, want) {
			t.Errorf("server %s: %v, want %v", key, got, want)
		}
	}
}

package api_test

import (
	"os"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/types"
)

// originalMessages loads the original Merlin API's message shapes from
// testdata (compiled by `make generate` from original_merlin.proto).
func originalMessages(t *testing.T) func(name, text string) *dynamicpb.Message {
	t.Helper()
	raw, err := os.ReadFile("testdata/original_merlin.pb")
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		t.Fatal(err)
	}
	return func(name, text string) *dynamicpb.Message {
		t.Helper()
		d, err := files.FindDescriptorByName(protoreflect.FullName("originalmerlin." + name))
		if err != nil {
			t.Fatal(err)
		}
		m := dynamicpb.NewMessage(d.(protoreflect.MessageDescriptor))
		if err := (prototext.UnmarshalOptions{Resolver: dynamicResolver{files}}).Unmarshal([]byte(text), m); err != nil {
			t.Fatalf("%s %q: %v", name, text, err)
		}
		return m
	}
}

type dynamicResolver struct{ files *protoregistry.Files }

func (r dynamicResolver) FindExtensionByName(protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return nil, protoregistry.NotFound
}
func (r dynamicResolver) FindExtensionByNumber(protoreflect.FullName, protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return nil, protoregistry.NotFound
}
func (r dynamicResolver) FindMessageByName(n protoreflect.FullName) (protoreflect.MessageType, error) {
	d, err := r.files.FindDescriptorByName(n)
	if err != nil {
		return protoregistry.GlobalTypes.FindMessageByName(n)
	}
	return dynamicpb.NewMessageType(d.(protoreflect.MessageDescriptor)), nil
}
func (r dynamicResolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	return protoregistry.GlobalTypes.FindMessageByURL(url)
}

// TestAPIOriginalClient drives merlin with messages of the original
// Merlin API's shapes, as a client compiled against it sends them.
func TestAPIOriginalClient(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx := ctxT(t)
	msg := originalMessages(t)
	call := func(method string, req proto.Message, resp proto.Message) {
		t.Helper()
		if err := env.original.Invoke(ctx, "/types.Merlin/"+method, req, resp); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
	}
	call("CreateService", msg("VirtualService", `id: "web" key {ip: "198.18.0.10" port: 80 protocol: TCP} config {scheduler: "sh" flags: ["flag-1", "flag-2"]}`), &emptypb.Empty{})
	call("CreateServer", msg("RealServer", `serviceID: "web" key {ip: "198.19.0.2" port: 8080} config {weight {value: 2} forward: MASQ}
		health_check {endpoint {value: "http://:8080/health"} period {seconds: 5} timeout {seconds: 1} up_threshold: 2 down_threshold: 3}`), &emptypb.Empty{})
	// Without a health check: the original always listed an empty message,
	// and its list code reads health_check.endpoint unchecked.
	call("CreateServer", msg("RealServer", `serviceID: "web" key {ip: "198.19.0.3" port: 8080} config {weight {value: 1} forward: MASQ}`), &emptypb.Empty{})
	call("UpdateService", msg("VirtualService", `id: "web" config {scheduler: "rr"}`), &emptypb.Empty{})
	// Weight 0 and an empty endpoint are set explicitly through the wrappers.
	call("UpdateServer", msg("RealServer", `serviceID: "web" key {ip: "198.19.0.2" port: 8080} config {weight {value: 0}} health_check {endpoint {value: ""}}`), &emptypb.Empty{})

	list := msg("ListResponse", "")
	call("List", &emptypb.Empty{}, list)
	want := msg("ListResponse", `items {
		service {id: "web" key {ip: "198.18.0.10" port: 80 protocol: TCP} config {scheduler: "rr" flags: ["flag-1", "flag-2"]}}
		servers {serviceID: "web" key {ip: "198.19.0.2" port: 8080} config {weight {value: 0} forward: MASQ}
			health_check {endpoint {value: ""} period {seconds: 5} timeout {seconds: 1} up_threshold: 2 down_threshold: 3}}
		servers {serviceID: "web" key {ip: "198.19.0.3" port: 8080} config {weight {value: 1} forward: MASQ} health_check {}}
	}`)
	// Fields merlin added are unknown to the old client; it sees its own.
	list.SetUnknown(nil)
	clearUnknown(list)
	if !proto.Equal(list, want) {
		t.Fatalf("old client lists\n%v\nwant\n%v", prototext.Format(list), prototext.Format(want))
	}

	// Its protobuf library keeps the fields it does not know and sends them
	// back: a read-modify-write carries merlin's revision. It stays a merge
	// even when the object changed since the read.
	fresh := msg("ListResponse", "")
	call("List", &emptypb.Empty{}, fresh)
	items := fresh.Descriptor().Fields().ByName("items")
	srv := fresh.ProtoReflect().Get(items).List().Get(0).Message().Get(items.Message().Fields().ByName("servers")).List().Get(1).Message().Interface()
	call("UpdateServer", msg("RealServer", `serviceID: "web" key {ip: "198.19.0.3" port: 8080} config {weight {value: 4}}`), &emptypb.Empty{})
	if len(srv.ProtoReflect().GetUnknown()) == 0 {
		t.Fatal("the listed server carries no unknown fields (its revision)")
	}
	echo := proto.Clone(srv)
	setWeight(t, echo, 7)
	call("UpdateServer", echo, &emptypb.Empty{}) // stale revision, no header: applied
	item, err := env.client.GetService(ctx, wrapperspb.String("web"))
	if err != nil || item.Servers[1].Config.Weight.GetValue() != 7 {
		t.Fatalf("the echoed revision made the update conditional: %v, %v", item, err)
	}
	// A client that means its revisions gets optimistic concurrency.
	stale := item.Servers[1]
	stale.Revision--
	if _, err := env.client.UpdateServer(ctx, stale); status.Code(err) != codes.Aborted {
		t.Fatalf("stale revision with the header: %v, want Aborted", err)
	}
	call("DeleteServer", msg("RealServer", `serviceID: "web" key {ip: "198.19.0.3" port: 8080}`), &emptypb.Empty{})
	call("DeleteServer", msg("RealServer", `serviceID: "web" key {ip: "198.19.0.2" port: 8080}`), &emptypb.Empty{})
	call("DeleteService", wrapperspb.String("web"), &emptypb.Empty{})
	empty := msg("ListResponse", "")
	call("List", &emptypb.Empty{}, empty)
	clearUnknown(empty)
	if !proto.Equal(empty, msg("ListResponse", "")) {
		t.Fatalf("not empty after deletes: %v", prototext.Format(empty))
	}
}

func clearUnknown(m protoreflect.ProtoMessage) {
	r := m.ProtoReflect()
	r.SetUnknown(nil)
	r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				clearUnknown(v.List().Get(i).Message().Interface())
			}
		case fd.Message() != nil && !fd.IsMap():
			clearUnknown(v.Message().Interface())
		}
		return true
	})
}

// setWeight sets config.weight.value of a dynamic RealServer.
func setWeight(t *testing.T, m proto.Message, w uint32) {
	t.Helper()
	r := m.ProtoReflect()
	cfg := r.Mutable(r.Descriptor().Fields().ByName("config")).Message()
	weight := cfg.Mutable(cfg.Descriptor().Fields().ByName("weight")).Message()
	weight.Set(weight.Descriptor().Fields().ByName("value"), protoreflect.ValueOfUint32(w))
}

// An original client edits a service's scheduler flags: the persistence it
// cannot express (set through the new API or meradm -p) stays.
func TestAPIOriginalClientKeepsPersistence(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx := ctxT(t)
	msg := originalMessages(t)
	svc := &types.VirtualService{Id: "pers", Key: &types.VirtualService_Key{Ip: "198.18.0.10", Port: 80, Protocol: types.Protocol_TCP},
		Config: &types.VirtualService_Config{Scheduler: "sh", PersistenceTimeout: wrapperspb.UInt32(300)}}
	if _, err := env.client.CreateService(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if err := env.original.Invoke(ctx, "/types.Merlin/UpdateService", msg("VirtualService", `id: "pers" config {flags: ["flag-1"]}`), &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	item, err := env.client.GetService(ctx, wrapperspb.String("pers"))
	if err != nil {
		t.Fatal(err)
	}
	if item.Service.Config.GetPersistenceTimeout().GetValue() != 300 {
		t.Fatalf("persistence cleared: %v", item.Service.Config)
	}
}

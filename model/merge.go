package model

import (
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// MergePresent lays every field src carries over dst: what an update
// without a revision changes, and how a server's own health check lies over
// its service's default. Unlike proto.Merge, a field sent with
// presence replaces the stored value even when it is zero, false or empty:
// wrapper types (UInt32Value, BoolValue, StringValue …), durations and
// `optional` fields. Repeated fields given replace the stored list. Plain
// proto3 scalars (a scheduler name, an enum) cannot be told apart from
// "not sent" when zero, so they change only to a non-zero value; other
// messages merge field by field.
func MergePresent(dst, src proto.Message) {
	mergeReflect(dst.ProtoReflect(), src.ProtoReflect())
}

func mergeReflect(dst, src protoreflect.Message) {
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() || fd.IsMap():
			dst.Set(fd, cloneValue(fd, v, dst))
		case fd.Message() != nil && !wellKnown(fd.Message()):
			mergeReflect(dst.Mutable(fd).Message(), v.Message())
		case fd.Message() != nil:
			dst.Set(fd, protoreflect.ValueOfMessage(proto.Clone(v.Message().Interface()).ProtoReflect()))
		default:
			dst.Set(fd, v)
		}
		return true
	})
}

// wellKnown: google.protobuf types (wrappers, Duration, Timestamp) are
// values, replaced whole.
func wellKnown(md protoreflect.MessageDescriptor) bool {
	return strings.HasPrefix(string(md.FullName()), "google.protobuf.")
}

func cloneValue(fd protoreflect.FieldDescriptor, v protoreflect.Value, dst protoreflect.Message) protoreflect.Value {
	out := dst.NewField(fd)
	switch {
	case fd.IsList():
		l, nl := v.List(), out.List()
		for i := range l.Len() {
			e := l.Get(i)
			if fd.Message() != nil {
				e = protoreflect.ValueOfMessage(proto.Clone(e.Message().Interface()).ProtoReflect())
			}
			nl.Append(e)
		}
	case fd.IsMap():
		m, nm := v.Map(), out.Map()
		m.Range(func(k protoreflect.MapKey, e protoreflect.Value) bool {
			if fd.MapValue().Message() != nil {
				e = protoreflect.ValueOfMessage(proto.Clone(e.Message().Interface()).ProtoReflect())
			}
			nm.Set(k, e)
			return true
		})
	}
	return out
}

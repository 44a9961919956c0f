package model

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Limits on what one service or server may carry. Every string field has
// a maximum length (MaxStringBytes unless listed in stringLimits), every
// list a maximum count; no string but a payload may hold control
// characters. They keep a write from filling etcd or a log line, and an
// error message from echoing a megabyte back.
const (
	MaxStringBytes  = 256
	MaxPayloadBytes = 1024 // udp_send, udp_expect, expect_body
	MaxListItems    = 32
)

// stringLimits are the string fields with their own maximum (by field
// name; the same name means the same thing in every message).
var stringLimits = map[protoreflect.Name]int{
	"udp_send":    MaxPayloadBytes,
	"udp_expect":  MaxPayloadBytes,
	"expect_body": MaxPayloadBytes,
	"command":     MaxPayloadBytes,
	"value":       512, // a wrapped string: the health check endpoint URL
}

// secrets are never quoted back, even in part.
var secrets = map[protoreflect.Name]bool{"password": true}

// payloads may hold any byte: they are sent or matched, never printed raw.
var payloads = map[protoreflect.Name]bool{"udp_send": true, "udp_expect": true, "expect_body": true}

// CheckSizes walks every field of m and names the first one over its
// limit, or holding control characters where it must not.
func CheckSizes(m proto.Message) error {
	return checkSizes("", m.ProtoReflect(), "")
}

func checkSizes(prefix string, m protoreflect.Message, parent protoreflect.Name) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		field := prefix + string(fd.Name())
		name := fd.Name()
		if name == "value" && parent != "" { // a wrapper: report the wrapped field
			field, name = strings.TrimSuffix(prefix, "."), "value"
		}
		switch {
		case fd.IsMap():
			err = checkMap(field, fd, v.Map())
		case fd.IsList():
			l := v.List()
			if l.Len() > MaxListItems {
				err = FieldErrorf(field, "%d items, at most %d", l.Len(), MaxListItems)
				return false
			}
			for i := range l.Len() {
				if err = checkValue(fmt.Sprintf("%s[%d]", field, i), fd, name, l.Get(i)); err != nil {
					return false
				}
			}
		default:
			err = checkValue(field, fd, name, v)
		}
		return err == nil
	})
	return err
}

// checkMap bounds a map of strings (node labels) like a list.
func checkMap(field string, fd protoreflect.FieldDescriptor, m protoreflect.Map) error {
	if m.Len() > MaxListItems {
		return FieldErrorf(field, "%d entries, at most %d", m.Len(), MaxListItems)
	}
	var err error
	m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		key := k.String()
		if err = checkString(field+" key", fd.Name(), key); err == nil && fd.MapValue().Kind() == protoreflect.StringKind {
			err = checkString(field+"["+Truncate(key, 32)+"]", fd.Name(), v.String())
		}
		return err == nil
	})
	return err
}

func checkValue(field string, fd protoreflect.FieldDescriptor, name protoreflect.Name, v protoreflect.Value) error {
	switch fd.Kind() {
	case protoreflect.MessageKind:
		return checkSizes(field+".", v.Message(), fd.Name())
	case protoreflect.StringKind:
		return checkString(field, name, v.String())
	}
	return nil
}

func checkString(field string, name protoreflect.Name, s string) error {
	limit := MaxStringBytes
	if l, ok := stringLimits[name]; ok {
		limit = l
	}
	if len(s) > limit {
		return FieldErrorf(field, "%d bytes, at most %d", len(s), limit)
	}
	if payloads[name] {
		return nil
	}
	if !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		if secrets[name] {
			return FieldErrorf(field, "has control characters or invalid UTF-8")
		}
		return FieldErrorf(field, "%q has control characters or invalid UTF-8", Truncate(s, 32))
	}
	return nil
}

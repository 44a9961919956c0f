package ipvs

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// replyFromOp turns an encoded request into the reply the kernel would send
// for the same object: same nested attributes after the genl header.
func encodeForTest(t *testing.T, op Op) []byte {
	t.Helper()
	b, _, err := encodeOp(nil, op)
	if err != nil {
		t.Fatalf("encode %s: %v", op, err)
	}
	return b
}

func TestServiceRoundTrip(t *testing.T) {
	cases := []Service{
		{Key: ServiceKey{Protocol: TCP, Address: mustAddr("198.18.0.1"), Port: 80}, Config: ServiceConfig{Scheduler: "rr"}},
		{Key: ServiceKey{Protocol: UDP, Address: mustAddr("198.18.0.2"), Port: 53}, Config: ServiceConfig{Scheduler: "wrr", Flags: FlagOnePacket}},
		{Key: ServiceKey{Protocol: SCTP, Address: mustAddr("2001:db8::1"), Port: 3868}, Config: ServiceConfig{Scheduler: "mh", Flags: FlagMHFallback | FlagMHPort}},
		{Key: ServiceKey{Protocol: TCP, Address: mustAddr("198.18.0.3"), Port: 443}, Config: ServiceConfig{Scheduler: "sh", Flags: FlagPersistent | FlagSHPort, Timeout: 300, NetmaskBits: 24, PersistenceEngine: "sip"}},
		{Key: ServiceKey{Protocol: TCP, Address: mustAddr("2001:db8::2"), Port: 443}, Config: ServiceConfig{Scheduler: "lc", Flags: FlagPersistent, Timeout: 60, NetmaskBits: 64}},
		{Key: ServiceKey{Family: IPv4, FWMark: 7}, Config: ServiceConfig{Scheduler: "wlc", Flags: FlagSched3}},
		{Key: ServiceKey{Family: IPv6, FWMark: 0xffffffff}, Config: ServiceConfig{Scheduler: "fo"}},
	}
	for _, want := range cases {
		t.Run(want.Key.String(), func(t *testing.T) {
			b := encodeForTest(t, Op{Kind: OpAddService, Service: want})
			got, err := decodeService(b, true)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			want.Key = want.Key.Canonical()
			if got.Service != want {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got.Service, want)
			}
		})
	}
}

func TestDestinationRoundTrip(t *testing.T) {
	svc := Service{Key: ServiceKey{Protocol: TCP, Address: mustAddr("2001:db8::1"), Port: 80}}
	cases := []Destination{
		{Key: DestinationKey{Address: mustAddr("2001:db8:1::1"), Port: 8080}, Config: DestinationConfig{Weight: 1, Forward: Masquerade}},
		{Key: DestinationKey{Address: mustAddr("2001:db8:1::2"), Port: 80}, Config: DestinationConfig{Weight: 0, Forward: DirectRoute, UpperThreshold: 100, LowerThreshold: 50}},
		{Key: DestinationKey{Address: mustAddr("198.19.0.1"), Port: 80}, Config: DestinationConfig{Weight: 1 << 30, Forward: Tunnel, TunnelType: TunnelGUE, TunnelPort: 6080, TunnelFlags: TunnelChecksum}},
		{Key: DestinationKey{Address: mustAddr("198.19.0.2"), Port: 80}, Config: DestinationConfig{Weight: 5, Forward: Tunnel, TunnelType: TunnelGRE, TunnelFlags: TunnelRemoteChecksum}},
	}
	for _, want := range cases {
		t.Run(want.Key.String(), func(t *testing.T) {
			b := encodeForTest(t, Op{Kind: OpAddDestination, Service: svc, Destination: want})
			got, err := decodeDestination(b, IPv6, true)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if got.Destination != want {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got.Destination, want)
			}
		})
	}
}

func TestNetmaskEncoding(t *testing.T) {
	// The kernel reads an IPv4 mask in network order and an IPv6 prefix length.
	e := encoder{}
	e.netmask(ServiceKey{Protocol: TCP, Address: mustAddr("198.18.0.1")}, 24)
	if got := e.b[nlaHdrLen : nlaHdrLen+4]; string(got) != "\xff\xff\xff\x00" {
		t.Fatalf("ipv4 /24 mask bytes %x", got)
	}
	e = encoder{}
	e.netmask(ServiceKey{Protocol: TCP, Address: mustAddr("2001:db8::1")}, 0)
	if got := binary.NativeEndian.Uint32(e.b[nlaHdrLen:]); got != 128 {
		t.Fatalf("ipv6 default netmask %d, want 128", got)
	}
}

func TestStatsDecode(t *testing.T) {
	e := encoder{}
	for typ := uint16(attrStatsConns); typ <= attrStatsOutBPS; typ++ {
		var v [8]byte
		binary.NativeEndian.PutUint64(v[:], uint64(typ)<<40|uint64(typ))
		e.attr(typ, v[:])
	}
	s, err := decodeStats(e.b)
	if err != nil {
		t.Fatal(err)
	}
	if s.Connections != 1<<40|1 || s.OutBPS != 10<<40|10 || s.InBytes != 4<<40|4 {
		t.Fatalf("stats %+v", s)
	}
	if _, err := decodeStats([]byte{8, 0, 1, 0, 1, 2, 3, 4}); !errors.Is(err, errMalformed) {
		t.Fatalf("short u64: err %v, want malformed", err)
	}
}

func TestErrorReport(t *testing.T) {
	// An NLMSG_ERROR with NETLINK_CAP_ACK: errno, echoed header, ext-ack TLVs.
	data := binary.NativeEndian.AppendUint32(nil, uint32(0xffffffff-uint32(unix.EEXIST)+1))
	data = append(data, make([]byte, unix.NLMSG_HDRLEN)...)
	e := encoder{b: data}
	e.str(unix.NLMSGERR_ATTR_MSG, "already there")
	err := errorReport(nlMessage{typ: unix.NLMSG_ERROR, flags: unix.NLM_F_ACK_TLVS, data: e.b})
	if !errors.Is(err, unix.EEXIST) || err.Error() != "file exists (already there)" {
		t.Fatalf("got %v", err)
	}
	if err := errorReport(nlMessage{typ: unix.NLMSG_ERROR, data: make([]byte, 20)}); err != nil {
		t.Fatalf("ack decoded as error %v", err)
	}
	if err := errorReport(nlMessage{typ: unix.NLMSG_ERROR, data: []byte{1}}); !errors.Is(err, errMalformed) {
		t.Fatalf("short error: %v", err)
	}
}

func TestEncodeRejectsIncompleteKeys(t *testing.T) {
	bad := []Op{
		{Kind: OpAddService, Service: Service{Config: ServiceConfig{Scheduler: "rr"}}},
		{Kind: OpAddService, Service: Service{Key: ServiceKey{Address: mustAddr("198.18.0.1"), Port: 1}}},
		{Kind: OpAddService, Service: Service{Key: ServiceKey{FWMark: 1}}},
		{Kind: OpAddDestination, Service: Service{Key: ServiceKey{Protocol: TCP, Address: mustAddr("198.18.0.1"), Port: 1}}},
		{Kind: 99, Service: Service{Key: ServiceKey{Protocol: TCP, Address: mustAddr("198.18.0.1"), Port: 1}}},
	}
	for _, op := range bad {
		if _, _, err := encodeOp(nil, op); err == nil {
			t.Errorf("%+v encoded without error", op)
		}
	}
}

func TestEachMessageMalformed(t *testing.T) {
	for _, b := range [][]byte{
		{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},    // length below header
		{0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, // length beyond datagram
	} {
		if _, err := eachMessage(b, func(nlMessage) (bool, error) { return false, nil }); !errors.Is(err, errMalformed) {
			t.Errorf("%x: err %v", b, err)
		}
	}
}

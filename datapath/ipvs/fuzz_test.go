package ipvs

import "testing"

// The decoders take whatever the kernel sends: they must never panic.

func seedsFromOps(f *testing.F, ops ...Op) {
	for _, op := range ops {
		b, _, err := encodeOp(nil, op)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{4, 1, 0, 0, 8, 0, 1, 0})
}

var fuzzSeedOps = []Op{
	{Kind: OpAddService, Service: Service{Key: ServiceKey{Protocol: TCP, Address: mustAddr("198.18.0.1"), Port: 80}, Config: ServiceConfig{Scheduler: "rr", Flags: FlagPersistent, Timeout: 5, NetmaskBits: 24, PersistenceEngine: "sip"}}},
	{Kind: OpAddService, Service: Service{Key: ServiceKey{Family: IPv6, FWMark: 3}, Config: ServiceConfig{Scheduler: "mh"}}},
	{Kind: OpAddDestination, Service: Service{Key: ServiceKey{Protocol: UDP, Address: mustAddr("2001:db8::1"), Port: 53}},
		Destination: Destination{Key: DestinationKey{Address: mustAddr("198.19.0.1"), Port: 53}, Config: DestinationConfig{Weight: 3, Forward: Tunnel, TunnelType: TunnelGUE, TunnelPort: 9}}},
}

func FuzzDecodeService(f *testing.F) {
	seedsFromOps(f, fuzzSeedOps...)
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeService(b, true)
		if err != nil {
			return
		}
		// Whatever decodes must encode again and decode to the same service.
		enc, _, err := encodeOp(nil, Op{Kind: OpAddService, Service: s.Service})
		if err != nil {
			return // e.g. a protocol-less address service from a hostile kernel
		}
		again, err := decodeService(enc, true)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if again.Service != s.Service {
			t.Fatalf("unstable: %+v then %+v", s.Service, again.Service)
		}
	})
}

func FuzzDecodeDestination(f *testing.F) {
	seedsFromOps(f, fuzzSeedOps...)
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, fam := range []Family{IPv4, IPv6, 0} {
			_, _ = decodeDestination(b, fam, true)
		}
	})
}

// FuzzDecodeInfoTimeouts: the replies of the single-message commands
// (info, timeouts, stats, sync daemons) never panic.
func FuzzDecodeInfoTimeouts(f *testing.F) {
	f.Add([]byte{15, 1, 0, 0, 8, 0, 1, 0, 1, 2, 1, 0, 8, 0, 2, 0, 0, 16, 0, 0})
	f.Add([]byte{13, 1, 0, 0, 8, 0, 4, 0, 132, 3, 0, 0})
	f.Add(append([]byte{11, 1, 0, 0}, SyncDaemon{Role: Master, Interface: "eth0", SyncID: 3, Port: 8848, TTL: 1}.encode()...))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = decodeInfo(b)
		_, _ = decodeTimeouts(b)
		_, _ = decodeStats(b)
		_, _ = decodeDaemon(b)
	})
}

func FuzzNetlinkMessages(f *testing.F) {
	f.Add([]byte{36, 0, 0, 0, 2, 0, 0, 1, 5, 0, 0, 0, 1, 0, 0, 0, 239, 255, 255, 255, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = eachMessage(b, func(m nlMessage) (bool, error) {
			if m.typ == 2 {
				_ = errorReport(m)
			}
			return false, nil
		})
	})
}

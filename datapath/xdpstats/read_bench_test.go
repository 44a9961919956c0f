//go:build linux

package xdpstats

import (
	"net/netip"
	"os"
	"testing"
)

// BenchmarkRead reads 100,000 NAT server keys (forwarded and replies) and
// 10,000 VIPs, as a scrape of that table does.
func BenchmarkRead(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	p, err := LoadPrograms(10_000, 100_000)
	if err != nil {
		b.Skip(err)
	}
	defer p.Close()
	var keys Keys
	for i := range 100_000 {
		a := netip.AddrFrom4([4]byte{198, byte(18 + i>>16), byte(i >> 8), byte(i)})
		keys.Servers = append(keys.Servers, ServerKey{Method: NAT, Addr: a, Port: 8080, Proto: TCP})
		if i < 10_000 {
			keys.VIPs = append(keys.VIPs, VIPKey{Addr: a, Port: 80, Proto: TCP})
		}
	}
	if err := p.SetKeys(keys); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		forwarded := 0
		count := func(ServerKey, Counters) { forwarded++ }
		err := read(&p.objs.countersMaps, nil, Visit{VIP: func(VIPKey, Counters) {}, Forwarded: count, Reply: func(ServerKey, Counters) {}})
		if err != nil || forwarded != 100_000 {
			b.Fatalf("%v, %d", err, forwarded)
		}
	}
}

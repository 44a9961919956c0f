//go:build linux

package xdpstats_test

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
)

func update(t *testing.T, tp *topology, c *xdpstats.Counter, add, remove xdpstats.Keys) {
	t.Helper()
	in(t, tp.lb, func() error { return c.Update(add, remove) })
}

// keysOf lists what the maps hold, as a snapshot shows it.
func keysOf(s xdpstats.Snapshot) (vips []xdpstats.VIPKey, forwarded, replies []xdpstats.ServerKey, unmatched []netip.Addr) {
	cmpServer := func(a, b xdpstats.ServerKey) int { return strings.Compare(a.String(), b.String()) }
	vips = slices.SortedFunc(maps.Keys(s.VIPs), func(a, b xdpstats.VIPKey) int { return strings.Compare(a.String(), b.String()) })
	return vips, slices.SortedFunc(maps.Keys(s.Forwarded), cmpServer), slices.SortedFunc(maps.Keys(s.Replies), cmpServer),
		slices.SortedFunc(maps.Keys(s.Unmatched), netip.Addr.Compare)
}

// Update leaves the maps as Set would with the same keys in the end; an
// address shared by two VIP keys stays unmatched-counted until both go;
// an added key counts traffic.
func TestUpdateMatchesSet(t *testing.T) {
	tp := newTopology(t)
	c := openCounter(t, tp, config(pinDir(t)))
	set(t, tp, c, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP}})
	update(t, tp, c, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipTCP}, Servers: []xdpstats.ServerKey{serverNAT, serverTCP}}, xdpstats.Keys{})
	update(t, tp, c, xdpstats.Keys{}, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP}, Servers: []xdpstats.ServerKey{serverTCP}})
	vips, fwd, rep, unmatched := keysOf(read(t, c))
	if !slices.Equal(vips, []xdpstats.VIPKey{vipTCP}) || !slices.Equal(fwd, []xdpstats.ServerKey{serverNAT}) ||
		!slices.Equal(rep, []xdpstats.ServerKey{serverNAT}) || !slices.Equal(unmatched, []netip.Addr{vip}) {
		t.Fatalf("after updates: vips %v forwarded %v replies %v unmatched %v", vips, fwd, rep, unmatched)
	}
	if st := c.Status(); st.Keys != 3 || st.Dropped != 0 {
		t.Errorf("status %+v, want 3 keys", st)
	}
	// The same keys by Set: nothing changes.
	set(t, tp, c, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipTCP}, Servers: []xdpstats.ServerKey{serverNAT}})
	if v2, f2, r2, u2 := keysOf(read(t, c)); !slices.Equal(v2, vips) || !slices.Equal(f2, fwd) || !slices.Equal(r2, rep) || !slices.Equal(u2, unmatched) {
		t.Fatalf("Set of the same keys changed the maps: %v %v %v %v", v2, f2, r2, u2)
	}
	update(t, tp, c, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP}}, xdpstats.Keys{})
	sendUDP(t, tp.client, netip.AddrPortFrom(vip, vipUDP.Port).String(), 3, 100)
	waitFor(t, c, "the added VIP key counted", func(s xdpstats.Snapshot) bool { return s.VIPs[vipUDP].Packets == 3 })
	update(t, tp, c, xdpstats.Keys{}, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP, vipTCP}})
	if _, _, _, unmatched := keysOf(read(t, c)); len(unmatched) != 0 {
		t.Fatalf("unmatched %v after the address's last VIP key went", unmatched)
	}
}

// A full map: what fits is counted, the rest reported, and removing a key
// that did not fit takes it off the count.
func TestUpdateOverTheMapSize(t *testing.T) {
	tp := newTopology(t)
	cfg := config(pinDir(t))
	cfg.MaxVIPs = 2
	c := openCounter(t, tp, cfg)
	set(t, tp, c, xdpstats.Keys{VIPs: []xdpstats.VIPKey{vipUDP, vipTCP}})
	extra := xdpstats.VIPKey{Addr: vip, Port: 443, Proto: xdpstats.TCP}
	var err error
	in(t, tp.lb, func() error {
		err = c.Update(xdpstats.Keys{VIPs: []xdpstats.VIPKey{extra}}, xdpstats.Keys{})
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "did not fit") || c.Status().Dropped != 1 {
		t.Fatalf("over the map size: error %v, status %+v; want 1 dropped, reported", err, c.Status())
	}
	update(t, tp, c, xdpstats.Keys{}, xdpstats.Keys{VIPs: []xdpstats.VIPKey{extra}})
	if st := c.Status(); st.Dropped != 0 {
		t.Fatalf("after removing the key that did not fit: status %+v", st)
	}
}

//go:build linux

package xdpstats

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrNotOpen is returned by Set and Read while the counters are off.
var ErrNotOpen = errors.New("counters are off")

// Set makes the maps hold exactly the keys given: missing keys are added
// at zero, others deleted. Keys that do not fit are counted in Status.Dropped
// and reported in the error; the others are counted.
func (c *Counter) Set(keys Keys) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.want = Keys{VIPs: append([]VIPKey(nil), keys.VIPs...), Servers: append([]ServerKey(nil), keys.Servers...)}
	c.wantSet = true
	if c.objs == nil {
		return ErrNotOpen
	}
	return c.syncLocked()
}

// desired is the key set of every map for the wanted keys and the node's
// neighbour table and addresses.
type desired struct {
	vips, forwarded, replies map[countersKey]bool
	unmatched, locals        map[countersAddrKey]bool
	routes                   map[countersKey]ServerKey
	unresolved               int
}

func (c *Counter) desired() (desired, error) {
	d := desired{vips: map[countersKey]bool{}, forwarded: map[countersKey]bool{}, replies: map[countersKey]bool{},
		unmatched: map[countersAddrKey]bool{}, locals: map[countersAddrKey]bool{}, routes: map[countersKey]ServerKey{}}
	for _, k := range c.want.VIPs {
		d.vips[vipKey(k)] = true
		d.unmatched[addrKey(k.Addr)] = true
	}
	var macs map[netip.Addr]net.HardwareAddr
	for _, k := range c.want.Servers {
		switch k.Method {
		case NAT:
			d.forwarded[serverKey(k)] = true
			d.replies[serverKey(k)] = true
		case Tunnel:
			d.forwarded[serverKey(k)] = true
		case Route:
			if macs == nil {
				macs = neighbours()
			}
			mac, ok := macs[k.Addr.Unmap()]
			if !ok {
				d.unresolved++
				resolve(k.Addr.Unmap())
				continue
			}
			rk := routeKey(mac, k.Port, k.Proto)
			d.forwarded[rk] = true
			d.routes[rk] = k
		}
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return d, fmt.Errorf("list local addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			d.locals[addrKey(ip)] = true
		}
	}
	return d, nil
}

// resolve asks the kernel to resolve a server's link-layer address, as its
// first packet would, so the next refresh can key it.
func resolve(ip netip.Addr) {
	routes, err := netlink.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 || routes[0].Gw != nil {
		return // not on a link of this node: not reachable by direct routing
	}
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	_ = netlink.NeighSet(&netlink.Neigh{LinkIndex: routes[0].LinkIndex, Family: family, IP: ip.AsSlice(), Flags: netlink.NTF_USE})
}

// neighbours maps each address with a known link-layer address to it.
func neighbours() map[netip.Addr]net.HardwareAddr {
	out := map[netip.Addr]net.HardwareAddr{}
	list, err := netlink.NeighList(0, netlink.FAMILY_ALL)
	if err != nil {
		return out
	}
	for _, n := range list {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || len(n.HardwareAddr) != 6 || n.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE|netlink.NUD_NOARP) != 0 {
			continue
		}
		out[ip.Unmap()] = n.HardwareAddr
	}
	return out
}

// held is what the maps hold, as far as this process knows: changes are
// the difference to it. A full sync re-reads the kernel's keys (after Open,
// and from time to time to repair what someone else changed).
type held struct {
	vips, forwarded, replies map[countersKey]bool
	unmatched, locals        map[countersAddrKey]bool
}

func (c *Counter) syncLocked() error {
	d, err := c.desired()
	if err != nil {
		return err
	}
	h := &c.held
	var errs []error
	dropped := 0
	add := func(n int, err error) {
		dropped += n
		errs = append(errs, err)
	}
	zero := perCPUZero()
	add(syncMap(c.objs.Vips, &h.vips, d.vips, zero))
	add(syncMap(c.objs.Forwarded, &h.forwarded, d.forwarded, zero))
	add(syncMap(c.objs.Replies, &h.replies, d.replies, zero))
	add(syncMap(c.objs.Unmatched, &h.unmatched, d.unmatched, zero))
	add(syncMap(c.objs.Locals, &h.locals, d.locals, uint8(1)))
	c.routeMAC = d.routes
	c.status.Keys = len(d.vips) + len(d.forwarded) + len(d.replies)
	c.status.Dropped, c.status.Unresolved = dropped, d.unresolved
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("set counter keys: %w", err)
	}
	if dropped > 0 {
		return fmt.Errorf("set counter keys: %d keys did not fit (map full: raise the counters' max vips or max servers)", dropped)
	}
	return nil
}

func perCPUZero() []countersCounters {
	return make([]countersCounters, ebpf.MustPossibleCPU())
}

// syncMap makes m hold the keys of want: it deletes what *have has beyond
// them and adds the missing ones with value zero, keeping *have current.
// A nil *have is read from the kernel first. It returns how many did not fit.
func syncMap[K comparable](m *ebpf.Map, have *map[K]bool, want map[K]bool, zero any) (int, error) {
	if *have == nil {
		keys, err := mapKeys[K](m)
		if err != nil {
			return 0, err
		}
		*have = keys
	}
	h := *have
	for key := range h {
		if want[key] {
			continue
		}
		if err := m.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, fmt.Errorf("map %s: delete: %w", m, err)
		}
		delete(h, key)
	}
	dropped := 0
	for key := range want {
		if h[key] {
			continue
		}
		err := m.Update(&key, zero, ebpf.UpdateNoExist)
		switch {
		case err == nil, errors.Is(err, ebpf.ErrKeyExist):
			h[key] = true
		case errors.Is(err, unix.E2BIG):
			dropped++
		default:
			return dropped, fmt.Errorf("map %s: add: %w", m, err)
		}
	}
	return dropped, nil
}

// mapKeys reads every key of m.
func mapKeys[K comparable](m *ebpf.Map) (map[K]bool, error) {
	keys := map[K]bool{}
	var cur, next K
	err := m.NextKey(nil, &next)
	for err == nil {
		keys[next] = true
		cur = next
		err = m.NextKey(&cur, &next)
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("map %s: %w", m, err)
	}
	return keys, nil
}

// Read sums every counter over CPUs.
func (c *Counter) Read() (Snapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.objs == nil {
		return Snapshot{}, ErrNotOpen
	}
	s := Snapshot{VIPs: map[VIPKey]Counters{}, Unmatched: map[netip.Addr]Counters{}, Forwarded: map[ServerKey]Counters{}, Replies: map[ServerKey]Counters{}}
	err := errors.Join(
		readMap(c.objs.Vips, func(k countersKey, v Counters) { s.VIPs[fromVIPKey(k)] = v }),
		readMap(c.objs.Unmatched, func(k countersAddrKey, v Counters) { s.Unmatched[getAddr(k.Addr, k.Kind)] = v }),
		readMap(c.objs.Forwarded, func(k countersKey, v Counters) {
			if sk, ok := c.serverOf(k); ok {
				s.Forwarded[sk] = v
			}
		}),
		readMap(c.objs.Replies, func(k countersKey, v Counters) {
			if sk, ok := c.serverOf(k); ok {
				s.Replies[sk] = v
			}
		}),
	)
	if err != nil {
		return s, fmt.Errorf("read counters: %w", err)
	}
	return s, nil
}

func (c *Counter) serverOf(k countersKey) (ServerKey, bool) {
	if k.Kind == kindRoute {
		sk, ok := c.routeMAC[k]
		return sk, ok
	}
	return ServerKey{Method: Method(k.Kind >> 4), Addr: getAddr(k.Addr, k.Kind), Port: htons(k.Port), Proto: k.Proto}, true
}

func readMap[K any](m *ebpf.Map, fn func(K, Counters)) error {
	var k K
	var vals []countersCounters
	it := m.Iterate()
	for it.Next(&k, &vals) {
		var sum Counters
		for _, v := range vals {
			sum.add(v)
		}
		fn(k, sum)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", m, err)
	}
	return nil
}

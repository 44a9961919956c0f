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
	c.planned = planKeys(keys)
	if c.objs == nil {
		return ErrNotOpen
	}
	return c.syncLocked(true)
}

// keySet is the keys of one role's IPv4 and IPv6 maps.
type keySet struct {
	v4 map[countersKey4]bool
	v6 map[countersKey6]bool
}

func newKeySet() keySet { return keySet{v4: map[countersKey4]bool{}, v6: map[countersKey6]bool{}} }

func (s keySet) add(k mapKey) {
	switch {
	case k.zero:
	case k.is4:
		s.v4[k.v4] = true
	default:
		s.v6[k.v6] = true
	}
}

func (s keySet) len() int { return len(s.v4) + len(s.v6) }

// addrSet is the keys of an address-only IPv4 and IPv6 map pair.
type addrSet struct {
	v4 map[uint32]bool
	v6 map[countersAddr6]bool
}

func newAddrSet() addrSet { return addrSet{v4: map[uint32]bool{}, v6: map[countersAddr6]bool{}} }

func (s addrSet) add(a netip.Addr) {
	a = a.Unmap()
	switch {
	case a.Is4():
		s.v4[be32(a)] = true
	case a.Is6():
		s.v6[countersAddr6{Addr: a.As16()}] = true
	}
}

// planned is the key set of the maps that follow only the plan: built
// once per Set.
type planned struct {
	vips, forwarded, replies keySet
	unmatched                addrSet
	unmatchedRefs            addrRefs    // VIP keys per unmatched address (for Update)
	routes                   []ServerKey // direct-routing servers, keyed by MAC (nodeKeys)
}

func planKeys(want Keys) *planned {
	p := &planned{vips: newKeySet(), forwarded: newKeySet(), replies: newKeySet(), unmatched: newAddrSet(), unmatchedRefs: addrRefs{}}
	for _, k := range want.VIPs {
		if p.vips.put(keyOf(k.Addr, k.Port, k.Proto, 0)) {
			p.unmatchedRefs.inc(k.Addr.Unmap())
		}
		p.unmatched.add(k.Addr)
	}
	for _, k := range want.Servers {
		switch k.Method {
		case NAT:
			p.forwarded.add(keyOf(k.Addr, k.Port, k.Proto, kindNAT))
			p.replies.add(keyOf(k.Addr, k.Port, k.Proto, kindNAT))
		case Tunnel:
			p.forwarded.add(keyOf(k.Addr, k.Port, k.Proto, kindTunnel))
		case Route:
			p.routes = append(p.routes, k)
		}
	}
	return p
}

// fromNode is the key set of the maps that follow the node's tables: the
// direct-routing servers' MACs and the node's own addresses.
type fromNode struct {
	macs       map[countersMacKey]bool
	routes     map[countersMacKey]ServerKey
	unresolved int
	locals     addrSet
}

func nodeKeys(routes []ServerKey) (fromNode, error) {
	n := fromNode{macs: map[countersMacKey]bool{}, routes: map[countersMacKey]ServerKey{}, locals: newAddrSet()}
	var macs map[netip.Addr]net.HardwareAddr
	for _, k := range routes {
		if macs == nil {
			macs = neighbours()
		}
		mac, ok := macs[k.Addr.Unmap()]
		if !ok {
			n.unresolved++
			resolve(k.Addr.Unmap())
			continue
		}
		rk := routeKey(mac, k.Port, k.Proto)
		n.macs[rk] = true
		n.routes[rk] = k
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return n, fmt.Errorf("list local addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			n.locals.add(ip)
		}
	}
	return n, nil
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
	vips4, forwarded4, replies4 map[countersKey4]bool
	vips6, forwarded6, replies6 map[countersKey6]bool
	unmatched4, locals4         map[uint32]bool
	unmatched6, locals6         map[countersAddr6]bool
	macs                        map[countersMacKey]bool
}

// syncLocked brings the maps to the wanted keys: the planned ones when
// withPlan (after a Set, or a full sync), the node-derived ones always.
func (c *Counter) syncLocked(withPlan bool) error {
	n, err := nodeKeys(c.planned.routes)
	if err != nil {
		return err
	}
	h, o, p := &c.held, c.objs, c.planned
	var errs []error
	dropped := 0
	add := func(n int, err error) {
		dropped += n
		errs = append(errs, err)
	}
	zero, vipZero := perCPUZero(), perCPUVIPZero()
	if withPlan {
		c.plannedDropped = 0
		add(syncMap(o.Vips4, &h.vips4, p.vips.v4, vipZero))
		add(syncMap(o.Vips6, &h.vips6, p.vips.v6, vipZero))
		add(syncMap(o.Unmatched4, &h.unmatched4, p.unmatched.v4, vipZero))
		add(syncMap(o.Unmatched6, &h.unmatched6, p.unmatched.v6, vipZero))
		add(syncMap(o.Forwarded4, &h.forwarded4, p.forwarded.v4, zero))
		add(syncMap(o.Forwarded6, &h.forwarded6, p.forwarded.v6, zero))
		add(syncMap(o.Replies4, &h.replies4, p.replies.v4, zero))
		add(syncMap(o.Replies6, &h.replies6, p.replies.v6, zero))
		c.plannedDropped = dropped
	}
	dropped = c.plannedDropped
	add(syncMap(o.ForwardedMac, &h.macs, n.macs, zero))
	add(syncMap(o.Locals4, &h.locals4, n.locals.v4, uint8(1)))
	add(syncMap(o.Locals6, &h.locals6, n.locals.v6, uint8(1)))
	c.routeMAC = n.routes
	c.status.Keys = p.vips.len() + p.forwarded.len() + len(n.macs) + p.replies.len()
	c.status.Dropped, c.status.Unresolved = dropped, n.unresolved
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

func perCPUVIPZero() []countersVipCounters {
	return make([]countersVipCounters, ebpf.MustPossibleCPU())
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

// mapKeys reads every key of m. A key deleted under the walk makes the
// kernel start it again from the first bucket, so a walk far longer than
// the map is refused rather than run on while keys keep changing.
func mapKeys[K comparable](m *ebpf.Map) (map[K]bool, error) {
	keys := map[K]bool{}
	limit := 4*int(m.MaxEntries()) + 64
	var cur, next K
	err := m.NextKey(nil, &next)
	for steps := 0; err == nil; steps++ {
		if steps > limit {
			return nil, fmt.Errorf("map %s: keys changed all through %d steps of reading them", m, limit)
		}
		keys[next] = true
		cur = next
		err = m.NextKey(&cur, &next)
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("map %s: %w", m, err)
	}
	return keys, nil
}

// cloneMaps duplicates the descriptors of the counter's maps, so that they
// can be read without the lock while the counter closes them.
func cloneMaps(o *countersObjects) (*countersMaps, error) {
	clones := &countersMaps{}
	for _, pair := range []struct{ dst, src **ebpf.Map }{
		{&clones.Vips4, &o.Vips4}, {&clones.Vips6, &o.Vips6},
		{&clones.Unmatched4, &o.Unmatched4}, {&clones.Unmatched6, &o.Unmatched6},
		{&clones.Forwarded4, &o.Forwarded4}, {&clones.Forwarded6, &o.Forwarded6},
		{&clones.Replies4, &o.Replies4}, {&clones.Replies6, &o.Replies6},
		{&clones.ForwardedMac, &o.ForwardedMac}, {&clones.Locals4, &o.Locals4}, {&clones.Locals6, &o.Locals6},
	} {
		m, err := (*pair.src).Clone()
		if err != nil {
			_ = clones.Close()
			return nil, fmt.Errorf("clone map %s: %w", *pair.src, err)
		}
		*pair.dst = m
	}
	return clones, nil
}

// readHeld reads the keys the maps hold.
func readHeld(m *countersMaps) (held, error) {
	var h held
	err := errors.Join(
		readKeys(&h.vips4, m.Vips4), readKeys(&h.vips6, m.Vips6),
		readKeys(&h.unmatched4, m.Unmatched4), readKeys(&h.unmatched6, m.Unmatched6),
		readKeys(&h.forwarded4, m.Forwarded4), readKeys(&h.forwarded6, m.Forwarded6),
		readKeys(&h.replies4, m.Replies4), readKeys(&h.replies6, m.Replies6),
		readKeys(&h.macs, m.ForwardedMac), readKeys(&h.locals4, m.Locals4), readKeys(&h.locals6, m.Locals6))
	if err != nil {
		return held{}, fmt.Errorf("read counter keys: %w", err)
	}
	return h, nil
}

func readKeys[K comparable](dst *map[K]bool, m *ebpf.Map) error {
	keys, err := mapKeys[K](m)
	*dst = keys
	return err
}

// Read sums every counter over CPUs into a snapshot (ReadEach without
// keeping them all is what a large table's metrics want).
func (c *Counter) Read() (Snapshot, error) {
	s := Snapshot{VIPs: map[VIPKey]Counters{}, Unmatched: map[netip.Addr]Counters{}, Forwarded: map[ServerKey]Counters{}, Replies: map[ServerKey]Counters{}}
	err := c.ReadEach(s.visit())
	return s, err
}

// ReadEach sums every counter over CPUs and hands each to v as it is read;
// the maps of a role whose function is nil are not read. It reads clones
// of the maps without the lock (a system call per batch of keys), so Set
// and Update go on meanwhile and the read may see keys of the plan before
// and after them.
func (c *Counter) ReadEach(v Visit) error {
	c.mu.Lock()
	if c.objs == nil {
		c.mu.Unlock()
		return ErrNotOpen
	}
	maps, err := cloneMaps(c.objs)
	routes := c.routeMAC // replaced, never changed in place
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("read counters: %w", err)
	}
	defer maps.Close()
	if err := read(maps, routes, v); err != nil {
		return fmt.Errorf("read counters: %w", err)
	}
	return nil
}

func read(o *countersMaps, routes map[countersMacKey]ServerKey, v Visit) error {
	var errs []error
	if fn := v.VIP; fn != nil {
		errs = append(errs,
			readVIPMap(o.Vips4, func(k countersKey4, c Counters) { fn(vipOf4(k), c) }),
			readVIPMap(o.Vips6, func(k countersKey6, c Counters) { fn(vipOf6(k), c) }))
	}
	if fn := v.Unmatched; fn != nil {
		errs = append(errs,
			readVIPMap(o.Unmatched4, func(k uint32, c Counters) { fn(fromBE32(k), c) }),
			readVIPMap(o.Unmatched6, func(k countersAddr6, c Counters) { fn(netip.AddrFrom16(k.Addr), c) }))
	}
	if fn := v.Forwarded; fn != nil {
		errs = append(errs,
			readMap(o.Forwarded4, func(k countersKey4, c Counters) { fn(serverOf4(k), c) }),
			readMap(o.Forwarded6, func(k countersKey6, c Counters) { fn(serverOf6(k), c) }),
			readMap(o.ForwardedMac, func(k countersMacKey, c Counters) {
				if sk, ok := routes[k]; ok {
					fn(sk, c)
				}
			}))
	}
	if fn := v.Reply; fn != nil {
		errs = append(errs,
			readMap(o.Replies4, func(k countersKey4, c Counters) { fn(serverOf4(k), c) }),
			readMap(o.Replies6, func(k countersKey6, c Counters) { fn(serverOf6(k), c) }))
	}
	return errors.Join(errs...)
}

func readMap[K comparable](m *ebpf.Map, fn func(K, Counters)) error {
	return readPerCPU(m, (*Counters).add, fn)
}

func readVIPMap[K comparable](m *ebpf.Map, fn func(K, Counters)) error {
	return readPerCPU(m, (*Counters).addVIP, fn)
}

// readBatch is how many keys one batched lookup reads.
const readBatch = 4096

// readPerCPU sums each key's per-CPU values with add: a few batched
// lookups (one system call per readBatch keys), or one lookup per key on
// kernels without batches.
func readPerCPU[K comparable, V any](m *ebpf.Map, add func(*Counters, V), fn func(K, Counters)) error {
	ncpu := ebpf.MustPossibleCPU()
	keys := make([]K, readBatch)
	vals := make([]V, readBatch*ncpu)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			var sum Counters
			for _, v := range vals[i*ncpu : (i+1)*ncpu] {
				add(&sum, v)
			}
			fn(keys[i], sum)
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			return iteratePerCPU(m, add, fn)
		case err != nil:
			return fmt.Errorf("map %s: %w", m, err)
		}
	}
}

// iteratePerCPU walks the map key by key; a walk restarted by a deletion
// meets keys again, which are handed over once.
func iteratePerCPU[K comparable, V any](m *ebpf.Map, add func(*Counters, V), fn func(K, Counters)) error {
	var k K
	var vals []V
	seen := map[K]bool{}
	it := m.Iterate()
	for it.Next(&k, &vals) {
		if seen[k] {
			continue
		}
		seen[k] = true
		var sum Counters
		for _, v := range vals {
			add(&sum, v)
		}
		fn(k, sum)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", m, err)
	}
	return nil
}

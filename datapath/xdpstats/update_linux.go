//go:build linux

package xdpstats

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Update adds and removes keys: the result is what Set would make of the
// keys given so far with add put in and remove taken out, but only those
// keys' map entries are written, so one change costs the same however
// many keys the maps hold. Each key is added once and removed once (the
// caller keeps the set); an address shared by several VIP keys stays in
// the unmatched maps until its last one goes. Direct-routing servers are
// resolved to their MACs as by Set. Keys that do not fit are counted in
// Status.Dropped and reported in the error.
func (c *Counter) Update(add, remove Keys) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.planned == nil {
		c.planned = planKeys(Keys{})
	}
	p := c.planned
	delta := p.remove(remove)
	delta.merge(p.add(add))
	if c.objs == nil {
		return ErrNotOpen
	}
	dropped, err := c.applyDelta(delta)
	c.plannedDropped = max(0, c.plannedDropped+dropped)
	if delta.routes {
		// The MAC-keyed map follows the node's neighbour table: as Set.
		if err2 := c.syncLocked(false); err2 != nil {
			err = errors.Join(err, err2)
		}
	} else {
		c.status.Keys = p.vips.len() + p.forwarded.len() + len(c.held.macs) + p.replies.len()
		c.status.Dropped = c.plannedDropped
	}
	if err != nil {
		return fmt.Errorf("update counter keys: %w", err)
	}
	if dropped > 0 {
		return fmt.Errorf("update counter keys: %d keys did not fit (map full: raise the counters' max vips or max servers)", dropped)
	}
	return nil
}

// keyDelta is what one Update changes in the maps that follow the plan.
type keyDelta struct {
	vips, forwarded, replies keyChanges
	unmatched                addrChanges
	routes                   bool // the direct-routing servers changed
}

type keyChanges struct{ add, del []mapKey }

type addrChanges struct{ add, del []netip.Addr }

func (d *keyDelta) merge(o keyDelta) {
	d.vips.add, d.vips.del = append(d.vips.add, o.vips.add...), append(d.vips.del, o.vips.del...)
	d.forwarded.add, d.forwarded.del = append(d.forwarded.add, o.forwarded.add...), append(d.forwarded.del, o.forwarded.del...)
	d.replies.add, d.replies.del = append(d.replies.add, o.replies.add...), append(d.replies.del, o.replies.del...)
	d.unmatched.add, d.unmatched.del = append(d.unmatched.add, o.unmatched.add...), append(d.unmatched.del, o.unmatched.del...)
	d.routes = d.routes || o.routes
}

// add puts keys into the planned sets and says which entries are new.
func (p *planned) add(keys Keys) keyDelta {
	var d keyDelta
	for _, k := range keys.VIPs {
		mk := keyOf(k.Addr, k.Port, k.Proto, 0)
		if !p.vips.put(mk) {
			continue
		}
		d.vips.add = append(d.vips.add, mk)
		if a := k.Addr.Unmap(); p.unmatchedRefs.inc(a) {
			p.unmatched.add(a)
			d.unmatched.add = append(d.unmatched.add, a)
		}
	}
	for _, k := range keys.Servers {
		if k.Method == Route {
			p.routes, d.routes = append(p.routes, k), true
			continue
		}
		mk, nat, ok := serverEntry(k)
		if ok && p.forwarded.put(mk) {
			d.forwarded.add = append(d.forwarded.add, mk)
		}
		if ok && nat && p.replies.put(mk) {
			d.replies.add = append(d.replies.add, mk)
		}
	}
	return d
}

// serverEntry is the entry a NAT or tunnel server has in the forwarded
// map, and whether it has one in the replies map too (NAT).
func serverEntry(k ServerKey) (key mapKey, nat, ok bool) {
	switch k.Method {
	case NAT:
		return keyOf(k.Addr, k.Port, k.Proto, kindNAT), true, true
	case Tunnel:
		return keyOf(k.Addr, k.Port, k.Proto, kindTunnel), false, true
	}
	return mapKey{}, false, false
}

// remove takes keys out of the planned sets and says which entries went.
func (p *planned) remove(keys Keys) keyDelta {
	var d keyDelta
	for _, k := range keys.VIPs {
		mk := keyOf(k.Addr, k.Port, k.Proto, 0)
		if !p.vips.drop(mk) {
			continue
		}
		d.vips.del = append(d.vips.del, mk)
		if a := k.Addr.Unmap(); p.unmatchedRefs.dec(a) {
			p.unmatched.drop(a)
			d.unmatched.del = append(d.unmatched.del, a)
		}
	}
	var routes map[ServerKey]bool
	for _, k := range keys.Servers {
		if k.Method == Route {
			if routes == nil {
				routes = map[ServerKey]bool{}
			}
			routes[k] = true
			continue
		}
		mk, nat, ok := serverEntry(k)
		if ok && p.forwarded.drop(mk) {
			d.forwarded.del = append(d.forwarded.del, mk)
		}
		if ok && nat && p.replies.drop(mk) {
			d.replies.del = append(d.replies.del, mk)
		}
	}
	if routes != nil {
		kept := p.routes[:0]
		for _, k := range p.routes {
			if !routes[k] {
				kept = append(kept, k)
			}
		}
		p.routes, d.routes = kept, true
	}
	return d
}

// put adds k; false if it was there (or is no key).
func (s keySet) put(k mapKey) bool {
	switch {
	case k.zero:
		return false
	case k.is4:
		if s.v4[k.v4] {
			return false
		}
		s.v4[k.v4] = true
	default:
		if s.v6[k.v6] {
			return false
		}
		s.v6[k.v6] = true
	}
	return true
}

// drop removes k; false if it was not there.
func (s keySet) drop(k mapKey) bool {
	switch {
	case k.zero:
		return false
	case k.is4:
		if !s.v4[k.v4] {
			return false
		}
		delete(s.v4, k.v4)
	default:
		if !s.v6[k.v6] {
			return false
		}
		delete(s.v6, k.v6)
	}
	return true
}

func (s addrSet) drop(a netip.Addr) {
	switch {
	case a.Is4():
		delete(s.v4, be32(a))
	case a.Is6():
		delete(s.v6, countersAddr6{Addr: a.As16()})
	}
}

// addrRefs counts the VIP keys of each address (the unmatched maps hold
// an address while any VIP key has it).
type addrRefs map[netip.Addr]int

// inc counts one more; true for the first.
func (r addrRefs) inc(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	r[a]++
	return r[a] == 1
}

// dec counts one less; true when none is left.
func (r addrRefs) dec(a netip.Addr) bool {
	n, ok := r[a]
	if !ok {
		return false
	}
	if n <= 1 {
		delete(r, a)
		return true
	}
	r[a] = n - 1
	return false
}

// applyDelta writes the changed entries; it returns how many added keys
// did not fit, less the removed ones that had not.
func (c *Counter) applyDelta(d keyDelta) (int, error) {
	o, h := c.objs, &c.held
	if h.vips4 == nil {
		// Nothing read from the kernel yet (just opened): a full sync
		// reads what the maps hold and writes the whole plan.
		return 0, c.syncLocked(true)
	}
	zero, vipZero := perCPUZero(), perCPUVIPZero()
	dropped := 0
	var errs []error
	apply := func(n int, err error) {
		dropped += n
		errs = append(errs, err)
	}
	apply(applyKeys(o.Vips4, o.Vips6, h.vips4, h.vips6, d.vips, vipZero))
	apply(applyKeys(o.Forwarded4, o.Forwarded6, h.forwarded4, h.forwarded6, d.forwarded, zero))
	apply(applyKeys(o.Replies4, o.Replies6, h.replies4, h.replies6, d.replies, zero))
	for _, a := range d.unmatched.del {
		if a.Is4() {
			apply(deleteKey(o.Unmatched4, h.unmatched4, be32(a)))
		} else {
			apply(deleteKey(o.Unmatched6, h.unmatched6, countersAddr6{Addr: a.As16()}))
		}
	}
	for _, a := range d.unmatched.add {
		if a.Is4() {
			apply(addKey(o.Unmatched4, h.unmatched4, be32(a), vipZero))
		} else {
			apply(addKey(o.Unmatched6, h.unmatched6, countersAddr6{Addr: a.As16()}, vipZero))
		}
	}
	return dropped, errors.Join(errs...)
}

func applyKeys(m4, m6 *ebpf.Map, h4 map[countersKey4]bool, h6 map[countersKey6]bool, ch keyChanges, zero any) (int, error) {
	dropped := 0
	var errs []error
	for _, k := range ch.del {
		var n int
		var err error
		if k.is4 {
			n, err = deleteKey(m4, h4, k.v4)
		} else {
			n, err = deleteKey(m6, h6, k.v6)
		}
		dropped += n
		errs = append(errs, err)
	}
	for _, k := range ch.add {
		var n int
		var err error
		if k.is4 {
			n, err = addKey(m4, h4, k.v4, zero)
		} else {
			n, err = addKey(m6, h6, k.v6, zero)
		}
		dropped += n
		errs = append(errs, err)
	}
	return dropped, errors.Join(errs...)
}

// deleteKey removes a planned key from m and from what m holds; -1 for a
// key the map did not hold (it had not fit: one dropped key fewer).
func deleteKey[K comparable](m *ebpf.Map, held map[K]bool, k K) (int, error) {
	if !held[k] {
		return -1, nil
	}
	if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, fmt.Errorf("map %s: delete: %w", m, err)
	}
	delete(held, k)
	return 0, nil
}

// addKey adds k at zero; 1 if the map is full.
func addKey[K comparable](m *ebpf.Map, held map[K]bool, k K, zero any) (int, error) {
	if held[k] {
		return 0, nil
	}
	err := m.Update(&k, zero, ebpf.UpdateNoExist)
	switch {
	case err == nil, errors.Is(err, ebpf.ErrKeyExist):
		held[k] = true
		return 0, nil
	case errors.Is(err, unix.E2BIG):
		return 1, nil
	}
	return 0, fmt.Errorf("map %s: add: %w", m, err)
}

package node

import (
	"slices"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
)

// serviceCounterKeys is what one service plan claims of the counters: its
// kernel service, its VIP key and its servers' keys (each once, the
// first destination naming a key winning), as PlanCounterKeys reads them.
type serviceCounterKeys struct {
	kernel  ipvs.ServiceKey
	vip     xdpstats.VIPKey
	hasVIP  bool
	servers []serverClaim
}

// serverClaim is one server key a service claims. Its judge is a pointer:
// nearly every claim has none, and a judge by value (a whole health check)
// made the claims of 100,000 servers 73 MiB.
type serverClaim struct {
	key   xdpstats.ServerKey
	label ServerLabel
	judge *PassiveJudge // nil: not judged
}

// claimsOf reads a service plan's claims; false for a plan in error.
func claimsOf(id string, sp *ServicePlan) (serviceCounterKeys, bool) {
	if sp == nil || sp.Err != nil {
		return serviceCounterKeys{}, false
	}
	sk := sp.Virtual.Service.Key.Canonical()
	out := serviceCounterKeys{kernel: sk}
	if sk.FWMark != 0 {
		return out, true
	}
	out.vip, out.hasVIP = xdpstats.VIPKey{Addr: sk.Address, Port: sk.Port, Proto: uint8(sk.Protocol)}, true
	seen := map[xdpstats.ServerKey]bool{}
	out.servers = make([]serverClaim, 0, len(sp.Virtual.Destinations))
	for i, d := range sp.Virtual.Destinations {
		k, ok := counterServerKey(sk, d)
		if !ok || seen[k] {
			continue
		}
		seen[k] = true
		c := serverClaim{key: k, label: newServerLabel(id, serverName(sp, i, d))}
		if j, ok := passiveJudge(sp, c.label, k); ok {
			c.judge = &j
		}
		out.servers = append(out.servers, c)
	}
	return out, true
}

// serverName is destination i's name: the plan's own string where it has
// one (100,000 servers make no new one).
func serverName(sp *ServicePlan, i int, d ipvs.Destination) string {
	if i < len(sp.Servers) {
		return sp.Servers[i].Key
	}
	return d.Key.String()
}

// counterClaims keeps the plan's counter index and keys as services come,
// change and go: a key shared by services is labelled by the smallest
// service ID claiming it (as PlanCounterKeys, which walks them sorted),
// and a change costs only what the changed service claims.
type counterClaims struct {
	byService map[string]serviceCounterKeys
	kernel    claimants[ipvs.ServiceKey]
	vips      claimants[xdpstats.VIPKey]
	servers   claimants[xdpstats.ServerKey]
}

func newCounterClaims() *counterClaims {
	return &counterClaims{byService: map[string]serviceCounterKeys{}, kernel: newClaimants[ipvs.ServiceKey](),
		vips: newClaimants[xdpstats.VIPKey](), servers: newClaimants[xdpstats.ServerKey]()}
}

// claimants are the services claiming each key: most keys have one, kept
// without a slice of their own (210,000 keys at 10,000 services).
type claimants[K comparable] struct {
	one  map[K]string
	more map[K][]string // sorted; two or more
}

func newClaimants[K comparable]() claimants[K] {
	return claimants[K]{one: map[K]string{}, more: map[K][]string{}}
}

// add puts id among key's claimants; it returns the first and how many.
func (c claimants[K]) add(key K, id string) (string, int) {
	if ids, ok := c.more[key]; ok {
		if i, found := slices.BinarySearch(ids, id); !found {
			ids = slices.Insert(ids, i, id)
			c.more[key] = ids
		}
		return ids[0], len(ids)
	}
	other, ok := c.one[key]
	switch {
	case !ok:
		c.one[key] = id
		return id, 1
	case other == id:
		return id, 1
	}
	delete(c.one, key)
	ids := []string{other, id}
	slices.Sort(ids)
	c.more[key] = ids
	return ids[0], 2
}

// remove takes id from key's claimants; it returns the first left and how
// many are left.
func (c claimants[K]) remove(key K, id string) (string, int) {
	if ids, ok := c.more[key]; ok {
		if i, found := slices.BinarySearch(ids, id); found {
			ids = slices.Delete(ids, i, i+1)
		}
		if len(ids) == 1 {
			delete(c.more, key)
			c.one[key] = ids[0]
			return ids[0], 1
		}
		c.more[key] = ids
		return ids[0], len(ids)
	}
	if other, ok := c.one[key]; ok && other != id {
		return other, 1
	}
	delete(c.one, key)
	return "", 0
}

// each calls fn with every key claimed.
func (c claimants[K]) each(fn func(K)) {
	for k := range c.one {
		fn(k)
	}
	for k := range c.more {
		fn(k)
	}
}

// ids calls fn with each service claiming key.
func (c claimants[K]) ids(key K, fn func(string)) {
	if id, ok := c.one[key]; ok {
		fn(id)
	}
	for _, id := range c.more[key] {
		fn(id)
	}
}

// keyChanges are the counter keys a change adds (+1) and removes (-1),
// net: a key a service gives up and takes again (its plan was replaced)
// is not touched, so its count goes on.
type keyChanges struct {
	vips    map[xdpstats.VIPKey]int
	servers map[xdpstats.ServerKey]int
}

func (k *keyChanges) vip(key xdpstats.VIPKey, d int) {
	if k.vips == nil {
		k.vips = map[xdpstats.VIPKey]int{}
	}
	if k.vips[key] += d; k.vips[key] == 0 {
		delete(k.vips, key)
	}
}

func (k *keyChanges) server(key xdpstats.ServerKey, d int) {
	if k.servers == nil {
		k.servers = map[xdpstats.ServerKey]int{}
	}
	if k.servers[key] += d; k.servers[key] == 0 {
		delete(k.servers, key)
	}
}

func (k *keyChanges) empty() bool { return len(k.vips)+len(k.servers) == 0 }

// split is the net change as keys to add and keys to remove.
func (k *keyChanges) split() (add, remove xdpstats.Keys) {
	for key, d := range k.vips {
		if d > 0 {
			add.VIPs = append(add.VIPs, key)
		} else {
			remove.VIPs = append(remove.VIPs, key)
		}
	}
	for key, d := range k.servers {
		if d > 0 {
			add.Servers = append(add.Servers, key)
		} else {
			remove.Servers = append(remove.Servers, key)
		}
	}
	return add, remove
}

// update replaces service id's claims by those of sp (nil: it is gone),
// keeping idx in step, and says which keys came and went.
func (c *counterClaims) update(idx *CounterIndex, id string, sp *ServicePlan, ch *keyChanges) {
	if old, ok := c.byService[id]; ok {
		delete(c.byService, id)
		c.unclaim(idx, id, old, ch)
	}
	if claims, ok := claimsOf(id, sp); ok {
		c.byService[id] = claims
		c.claim(idx, id, claims, ch)
	}
}

func (c *counterClaims) claim(idx *CounterIndex, id string, s serviceCounterKeys, ch *keyChanges) {
	if first, _ := c.kernel.add(s.kernel, id); first == id {
		idx.Services[s.kernel] = id
	}
	if s.hasVIP {
		first, n := c.vips.add(s.vip, id)
		if n == 1 {
			ch.vip(s.vip, 1)
		}
		if first == id {
			idx.VIPs[s.vip] = id
		}
	}
	for _, sc := range s.servers {
		first, n := c.servers.add(sc.key, id)
		if n == 1 {
			ch.server(sc.key, 1)
		}
		if first == id {
			c.label(idx, sc)
		}
	}
}

func (c *counterClaims) unclaim(idx *CounterIndex, id string, s serviceCounterKeys, ch *keyChanges) {
	if first, n := c.kernel.remove(s.kernel, id); n == 0 {
		delete(idx.Services, s.kernel)
	} else {
		idx.Services[s.kernel] = first
	}
	if s.hasVIP {
		if first, n := c.vips.remove(s.vip, id); n == 0 {
			delete(idx.VIPs, s.vip)
			ch.vip(s.vip, -1)
		} else {
			idx.VIPs[s.vip] = first
		}
	}
	for _, sc := range s.servers {
		first, n := c.servers.remove(sc.key, id)
		switch {
		case n == 0:
			delete(idx.Servers, sc.key)
			delete(idx.Passive, sc.key)
			ch.server(sc.key, -1)
		case first != idx.Servers[sc.key].Service:
			c.label(idx, c.claimOf(first, sc.key))
		}
	}
}

// label names key sc.key by claim sc in the index.
func (c *counterClaims) label(idx *CounterIndex, sc serverClaim) {
	idx.Servers[sc.key] = sc.label
	if sc.judge != nil {
		idx.Passive[sc.key] = *sc.judge
	} else {
		delete(idx.Passive, sc.key)
	}
}

// claimOf is service id's claim of key.
func (c *counterClaims) claimOf(id string, key xdpstats.ServerKey) serverClaim {
	for _, sc := range c.byService[id].servers {
		if sc.key == key {
			return sc
		}
	}
	return serverClaim{key: key}
}

// keys lists every key claimed.
func (c *counterClaims) keys() xdpstats.Keys {
	var k xdpstats.Keys
	c.vips.each(func(v xdpstats.VIPKey) { k.VIPs = append(k.VIPs, v) })
	c.servers.each(func(s xdpstats.ServerKey) { k.Servers = append(k.Servers, s) })
	return k
}

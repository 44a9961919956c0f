package ipvs

import (
	"cmp"
	"slices"
)

// Diff returns the ops that turn the actual table into the desired one, in
// an order the kernel accepts: services that go away first, then for each
// service in key order: add or update the service, delete the destinations
// it no longer has, update changed ones in place, add new ones. A service
// delete takes its destinations with it in the kernel, so none are deleted
// one by one. Changes are updates in place, never delete and add (a weight
// change is an update, so connections survive it).
//
// Diff treats actual as the whole truth about what it may change: callers
// pass only the services they own. Keys are compared in canonical form
// (ServiceKey.Canonical); a key listed twice in desired counts once (the
// first). Diff does not modify its arguments.
func Diff(desired, actual []VirtualServer) []Op {
	have := make(map[ServiceKey]*VirtualServer, len(actual))
	for i := range actual {
		k := actual[i].Service.Key.Canonical()
		if _, dup := have[k]; !dup {
			have[k] = &actual[i]
		}
	}
	want := make(map[ServiceKey]*VirtualServer, len(desired))
	wantKeys := make([]ServiceKey, 0, len(desired))
	for i := range desired {
		k := desired[i].Service.Key.Canonical()
		if _, dup := want[k]; !dup {
			want[k] = &desired[i]
			wantKeys = append(wantKeys, k)
		}
	}

	var gone []ServiceKey
	for k := range have {
		if _, ok := want[k]; !ok {
			gone = append(gone, k)
		}
	}
	// Sized for what is sure to come: on a cold start (110,000 ops) growing
	// the slice was most of Diff's time.
	ops := make([]Op, 0, len(gone)+addOps(wantKeys, want, have))
	slices.SortFunc(gone, compareServiceKeys)
	for _, k := range gone {
		ops = append(ops, Op{Kind: OpDeleteService, Service: Service{Key: k, Config: have[k].Service.Config}})
	}

	slices.SortFunc(wantKeys, compareServiceKeys)
	for _, k := range wantKeys {
		w := want[k]
		svc := Service{Key: k, Config: normalServiceConfig(k, w.Service.Config)}
		h, exists := have[k]
		if !exists {
			ops = append(ops, Op{Kind: OpAddService, Service: svc})
			for _, d := range sortedDestinations(w.Destinations) {
				ops = append(ops, Op{Kind: OpAddDestination, Service: svc, Destination: d})
			}
			continue
		}
		if normalServiceConfig(k, h.Service.Config) != svc.Config {
			ops = append(ops, Op{Kind: OpUpdateService, Service: svc})
		}
		ops = diffDestinations(ops, svc, w.Destinations, h.Destinations)
	}
	return ops
}

// addOps counts the ops of the services of keys that have lacks: each
// added with its destinations.
func addOps(keys []ServiceKey, want, have map[ServiceKey]*VirtualServer) int {
	n := 0
	for _, k := range keys {
		if _, exists := have[k]; !exists {
			n += 1 + len(want[k].Destinations)
		}
	}
	return n
}

func diffDestinations(ops []Op, svc Service, desired, actual []Destination) []Op {
	have := make(map[DestinationKey]DestinationConfig, len(actual))
	var haveKeys []DestinationKey
	for _, d := range actual {
		k := DestinationKey{Address: d.Key.Address.Unmap(), Port: d.Key.Port}
		if _, dup := have[k]; !dup {
			have[k] = normalDestinationConfig(d.Config)
			haveKeys = append(haveKeys, k)
		}
	}
	want := sortedDestinations(desired)
	wanted := make(map[DestinationKey]bool, len(want))
	for _, d := range want {
		wanted[d.Key] = true
	}
	slices.SortFunc(haveKeys, compareDestinationKeys)
	for _, k := range haveKeys {
		if !wanted[k] {
			ops = append(ops, Op{Kind: OpDeleteDestination, Service: svc, Destination: Destination{Key: k, Config: have[k]}})
		}
	}
	for _, d := range want {
		if cur, ok := have[d.Key]; ok && cur != d.Config {
			ops = append(ops, Op{Kind: OpUpdateDestination, Service: svc, Destination: d})
		}
	}
	for _, d := range want {
		if _, ok := have[d.Key]; !ok {
			ops = append(ops, Op{Kind: OpAddDestination, Service: svc, Destination: d})
		}
	}
	return ops
}

// sortedDestinations returns normalised destinations in key order, first
// occurrence of each key only.
func sortedDestinations(ds []Destination) []Destination {
	out := make([]Destination, len(ds))
	for i, d := range ds {
		out[i] = Destination{Key: DestinationKey{Address: d.Key.Address.Unmap(), Port: d.Key.Port}, Config: normalDestinationConfig(d.Config)}
	}
	// Stable: of a key's run, the first is its first occurrence.
	slices.SortStableFunc(out, func(a, b Destination) int { return compareDestinationKeys(a.Key, b.Key) })
	return slices.CompactFunc(out, func(a, b Destination) bool { return a.Key == b.Key })
}

// normalServiceConfig puts a config in the form the kernel reports it.
func normalServiceConfig(k ServiceKey, c ServiceConfig) ServiceConfig {
	c.Flags &^= flagHashed
	full := uint8(32)
	if k.Family == IPv6 {
		full = 128
	}
	if c.NetmaskBits >= full {
		c.NetmaskBits = 0
	}
	return c
}

// normalDestinationConfig puts a config in the form the kernel reports it.
func normalDestinationConfig(c DestinationConfig) DestinationConfig {
	c.Forward &= forwardMask
	if c.Forward != Tunnel {
		c.TunnelType, c.TunnelPort, c.TunnelFlags = 0, 0, 0
	}
	return c
}

func compareServiceKeys(a, b ServiceKey) int {
	return cmp.Or(
		cmp.Compare(a.Family, b.Family),
		cmp.Compare(a.FWMark, b.FWMark),
		cmp.Compare(a.Protocol, b.Protocol),
		a.Address.Compare(b.Address),
		cmp.Compare(a.Port, b.Port),
	)
}

func compareDestinationKeys(a, b DestinationKey) int {
	return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.Port, b.Port))
}

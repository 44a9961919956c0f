package node

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/model"
)

// ServerLabel names a real server in metrics: its service and IP:PORT,
// and the two as the label set every per-backend sample of the server
// carries, rendered once when the plan names the server rather than on
// every background read (twice a read for a NAT server, 100,000 times).
type ServerLabel struct {
	Service string
	Server  string
	labels  string // {service="…",server="…"}
}

func newServerLabel(service, server string) ServerLabel {
	return ServerLabel{Service: service, Server: server, labels: string(appendLabels(make([]byte, 0, 64), []string{"service", service, "server", server}))}
}

// CounterIndex maps what the kernel and the eBPF counters report back to
// the plan's names. A counter key shared by two services (the same NAT
// server behind two VIPs) is one count, labelled with the first service ID.
type CounterIndex struct {
	VIPs     map[xdpstats.VIPKey]string
	Servers  map[xdpstats.ServerKey]ServerLabel
	Services map[ipvs.ServiceKey]string // kernel service → service ID
	Passive  map[xdpstats.ServerKey]PassiveJudge
}

// PlanCounterKeys is what the eBPF counters should count for the plan: each
// programmable address service as a VIP key, and each of its real servers
// as the forwarded packets name it (NAT: address and port; IPIP tunnel:
// outer address, the VIP's port; direct routing: address — looked up as a
// MAC —, the VIP's port). Firewall-mark services are not seen by XDP (the
// mark is set later) and GUE/GRE tunnels are not parsed: neither is keyed.
func PlanCounterKeys(p *Plan) (xdpstats.Keys, CounterIndex) {
	idx := newCounterIndex()
	var keys xdpstats.Keys
	for _, id := range slices.Sorted(maps.Keys(p.Services)) {
		sp := p.Services[id]
		if sp.Err != nil {
			continue
		}
		sk := sp.Virtual.Service.Key.Canonical()
		if _, dup := idx.Services[sk]; !dup {
			idx.Services[sk] = id
		}
		if sk.FWMark != 0 {
			continue
		}
		proto := uint8(sk.Protocol)
		vk := xdpstats.VIPKey{Addr: sk.Address, Port: sk.Port, Proto: proto}
		if _, dup := idx.VIPs[vk]; !dup {
			idx.VIPs[vk] = id
			keys.VIPs = append(keys.VIPs, vk)
		}
		for _, d := range sp.Virtual.Destinations {
			k, ok := counterServerKey(sk, d)
			if !ok {
				continue
			}
			if _, dup := idx.Servers[k]; dup {
				continue
			}
			label := newServerLabel(id, d.Key.String())
			idx.Servers[k] = label
			keys.Servers = append(keys.Servers, k)
			if j, ok := passiveJudge(sp, label, k); ok {
				idx.Passive[k] = j
			}
		}
	}
	return keys, idx
}

func newCounterIndex() CounterIndex {
	return CounterIndex{VIPs: map[xdpstats.VIPKey]string{}, Servers: map[xdpstats.ServerKey]ServerLabel{}, Services: map[ipvs.ServiceKey]string{},
		Passive: map[xdpstats.ServerKey]PassiveJudge{}}
}

func counterServerKey(svc ipvs.ServiceKey, d ipvs.Destination) (xdpstats.ServerKey, bool) {
	k := xdpstats.ServerKey{Addr: d.Key.Address.Unmap(), Port: svc.Port, Proto: uint8(svc.Protocol)}
	switch d.Config.Forward {
	case ipvs.Masquerade:
		k.Method, k.Port = xdpstats.NAT, d.Key.Port
	case ipvs.Tunnel:
		if d.Config.TunnelType != ipvs.TunnelIPIP {
			return k, false
		}
		k.Method = xdpstats.Tunnel
	case ipvs.DirectRoute:
		k.Method = xdpstats.Route
	default:
		return k, false
	}
	return k, k.Addr.IsValid() && k.Addr != netip.IPv6Unspecified()
}

// passiveJudge: how a NAT server of a service with passive health is
// judged; not at all without an active check to count against.
func passiveJudge(sp *ServicePlan, label ServerLabel, k xdpstats.ServerKey) (PassiveJudge, bool) {
	window, minAttempts, maxFailed, on := model.PassiveSettings(sp.State.Service.GetPassiveHealth())
	sc, checked := sp.Checks.Servers[label.Server]
	if !on || !checked || k.Method != xdpstats.NAT {
		return PassiveJudge{}, false
	}
	return PassiveJudge{Label: label, Check: sc.Check, Window: window, MinAttempts: minAttempts, MaxFailedPercent: maxFailed}, true
}

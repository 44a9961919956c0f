package node

import (
	"fmt"
	"slices"
	"strings"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/model"
)

// backendSource says where a per-backend family's values come from.
type backendSource int

const (
	fromIPVS        backendSource = iota // the kernel's IPVS destination counters
	fromTCForwarded                      // the TC counters of packets forwarded to a server
	fromTCReply                          // the TC counters of a NAT server's replies
	fromPassive                          // passive health's window (NAT servers with passive health only)
)

// backendFamily is one metric family with a series per real server: at
// 10,000 services × 10 servers, 100,000 series each.
type backendFamily struct {
	name, typ, help string
	source          backendSource
	ipvs            func(ipvs.DestinationStatus) float64
	counter         func(xdpstats.Counters) uint64
	passive         func(PassiveFigures) uint64
}

func ipvsFamily(name, typ, help string, v func(ipvs.DestinationStatus) float64) backendFamily {
	return backendFamily{name: name, typ: typ, help: help, source: fromIPVS, ipvs: v}
}

func tcFamily(src backendSource, name, help string, v func(xdpstats.Counters) uint64) backendFamily {
	return backendFamily{name: name, typ: counterType, help: help, source: src, counter: v}
}

func passiveFamily(name, help string, v func(PassiveFigures) uint64) backendFamily {
	return backendFamily{name: name, typ: gaugeType, help: help, source: fromPassive, passive: v}
}

// backendFamilies is every per-backend family, in the order exported.
var backendFamilies = []backendFamily{
	ipvsFamily("merlin_ipvs_backend_connections_total", counterType, "Connections IPVS scheduled to the real server (kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.Connections) }),
	ipvsFamily("merlin_ipvs_backend_incoming_packets_total", counterType, "Packets IPVS forwarded to the real server (kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.InPackets) }),
	ipvsFamily("merlin_ipvs_backend_outgoing_packets_total", counterType, "Packets from the real server back through this node (NAT; kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.OutPackets) }),
	ipvsFamily("merlin_ipvs_backend_incoming_bytes_total", counterType, "Bytes IPVS forwarded to the real server (kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.InBytes) }),
	ipvsFamily("merlin_ipvs_backend_outgoing_bytes_total", counterType, "Bytes from the real server back through this node (kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.OutBytes) }),
	ipvsFamily("merlin_ipvs_backend_connections_active", gaugeType, "Established connections to the real server.", func(d ipvs.DestinationStatus) float64 { return float64(d.ActiveConnections) }),
	ipvsFamily("merlin_ipvs_backend_connections_inactive", gaugeType, "Connections to the real server in other states.", func(d ipvs.DestinationStatus) float64 { return float64(d.InactiveConnections) }),
	ipvsFamily("merlin_ipvs_backend_connections_persistent", gaugeType, "Persistence templates pointing at the real server.", func(d ipvs.DestinationStatus) float64 { return float64(d.PersistentConnections) }),
	ipvsFamily("merlin_ipvs_backend_weight", gaugeType, "The real server's weight in the kernel (0: no new connections).", func(d ipvs.DestinationStatus) float64 { return float64(d.Config.Weight) }),
	tcFamily(fromTCForwarded, "merlin_tc_forwarded_packets_total", "Packets IPVS forwarded to the real server, seen leaving this node (TC).", func(c xdpstats.Counters) uint64 { return c.Packets }),
	tcFamily(fromTCForwarded, "merlin_tc_forwarded_bytes_total", "Bytes (IP header on) forwarded to the real server (TC).", func(c xdpstats.Counters) uint64 { return c.Bytes }),
	tcFamily(fromTCForwarded, "merlin_tc_forwarded_syn_total", "Connection attempts (SYN without ACK) forwarded to the real server (TC).", func(c xdpstats.Counters) uint64 { return c.SYN }),
	tcFamily(fromTCForwarded, "merlin_tc_forwarded_fin_total", "Packets with FIN forwarded to the real server (TC).", func(c xdpstats.Counters) uint64 { return c.FIN }),
	tcFamily(fromTCForwarded, "merlin_tc_forwarded_rst_total", "Packets with RST forwarded to the real server (TC).", func(c xdpstats.Counters) uint64 { return c.RST }),
	tcFamily(fromTCReply, "merlin_tc_reply_packets_total", "Packets from the NAT real server back through this node (TC).", func(c xdpstats.Counters) uint64 { return c.Packets }),
	tcFamily(fromTCReply, "merlin_tc_reply_bytes_total", "Bytes from the NAT real server back through this node (TC).", func(c xdpstats.Counters) uint64 { return c.Bytes }),
	tcFamily(fromTCReply, "merlin_tc_reply_synack_total", "Connection attempts the NAT real server answered (SYN-ACK) (TC).", func(c xdpstats.Counters) uint64 { return c.SYNACK }),
	tcFamily(fromTCReply, "merlin_tc_reply_rst_total", "Resets from the NAT real server (refused or aborted connections) (TC).", func(c xdpstats.Counters) uint64 { return c.RST }),
	passiveFamily("merlin_passive_connection_attempts", "Connection attempts (SYN) forwarded to the NAT real server in its service's passive health window.", func(f PassiveFigures) uint64 { return f.Attempts }),
	passiveFamily("merlin_passive_connections_answered", "Of those, answered with a SYN-ACK.", func(f PassiveFigures) uint64 { return f.Answered }),
	passiveFamily("merlin_passive_connections_refused", "Resets from the real server in the window (refused or aborted connections).", func(f PassiveFigures) uint64 { return f.Refused }),
}

// DefaultBackendFamilies are the per-backend families exported unless an
// operator chooses: the ones the shipped dashboard and alert rules read.
var DefaultBackendFamilies = []string{
	"merlin_ipvs_backend_connections_active",
	"merlin_ipvs_backend_weight",
	"merlin_tc_forwarded_packets_total",
	"merlin_tc_forwarded_syn_total",
	"merlin_tc_reply_synack_total",
	"merlin_tc_reply_rst_total",
	"merlin_passive_connection_attempts",
	"merlin_passive_connections_answered",
	"merlin_passive_connections_refused",
}

// BackendFamilyNames lists every per-backend family.
func BackendFamilyNames() []string {
	out := make([]string, len(backendFamilies))
	for i, f := range backendFamilies {
		out[i] = f.name
	}
	return out
}

// ParseBackendFamilies reads a comma-separated choice of per-backend
// families: names, "default" (DefaultBackendFamilies), "all" or "none".
func ParseBackendFamilies(s string) ([]string, error) {
	known := BackendFamilyNames()
	var out []string
	for _, item := range strings.Split(s, ",") {
		switch item = strings.TrimSpace(item); {
		case item == "" || item == "none":
		case item == "default":
			out = append(out, DefaultBackendFamilies...)
		case item == "all":
			out = append(out, known...)
		case slices.Contains(known, item):
			out = append(out, item)
		default:
			return nil, fmt.Errorf("unknown per-backend family %q (want default, all, none or merlin_ipvs_backend_*, merlin_tc_*, merlin_passive_* names)", model.Truncate(item, 64))
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// selectedFamilies are the catalogue's families named in names, in
// catalogue order.
func selectedFamilies(names []string) []backendFamily {
	var out []backendFamily
	for _, f := range backendFamilies {
		if slices.Contains(names, f.name) {
			out = append(out, f)
		}
	}
	return out
}

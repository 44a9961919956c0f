package node

import (
	"context"
	"io"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
)

// trafficRead is everything one scrape reads, before it is written.
type trafficRead struct {
	idx          CounterIndex
	svcs         []ipvs.ServiceStats
	ipvsOK       bool
	ipvsSeconds  float64
	status       xdpstats.Status
	snap         xdpstats.Snapshot
	snapOK       bool
	snapSeconds  float64
	passive      map[xdpstats.ServerKey]PassiveFigures
	serverLabels [][]string // per service in svcs, per destination: "IP:PORT"
}

// WriteMetrics reads the kernel's IPVS counters of merlin's services
// (bounded by the scrape timeout; a cut-short read says so in
// merlin_ipvs_stats_up) and the eBPF counters, and writes them in the
// Prometheus text format labelled by service ID and server.
func (t *Traffic) WriteMetrics(ctx context.Context, w io.Writer) error {
	r := t.read(ctx)
	tw := newTextWriter(w)
	if t.kernel != nil {
		writeIPVS(tw, r)
	}
	if t.counters != nil {
		writeCounters(tw, r)
	}
	return tw.flush()
}

func (t *Traffic) read(ctx context.Context) *trafficRead {
	r := &trafficRead{idx: t.index.get()}
	if t.kernel != nil {
		start := time.Now()
		ctx, cancel := context.WithTimeout(ctx, t.timeout)
		keep := func(k ipvs.ServiceKey) bool { _, ok := r.idx.Services[k.Canonical()]; return ok }
		svcs, err := t.kernel.Stats(ctx, keep)
		if err != nil && ctx.Err() == nil {
			// A dump the kernel cut short (the table changed under it) is
			// read once more; a second failure exports what it got.
			if again, err2 := t.kernel.Stats(ctx, keep); len(again) >= len(svcs) {
				svcs, err = again, err2
			}
		}
		cancel()
		r.svcs, r.ipvsOK, r.ipvsSeconds = svcs, err == nil, time.Since(start).Seconds()
		r.serverLabels = make([][]string, len(svcs))
		for i, s := range svcs {
			r.serverLabels[i] = make([]string, len(s.Destinations))
			for j, d := range s.Destinations {
				r.serverLabels[i][j] = d.Key.String()
			}
		}
	}
	if t.counters != nil {
		r.status = t.counters.Status()
		if r.status.On {
			start := time.Now()
			snap, err := t.counters.Read()
			r.snap, r.snapOK, r.snapSeconds = snap, err == nil, time.Since(start).Seconds()
		}
		r.passive = t.passive.lastFigures()
	}
	return r
}

const (
	counterType = "counter"
	gaugeType   = "gauge"
)

func writeIPVS(tw *textWriter, r *trafficRead) {
	svc := func(name, typ, help string, v func(ipvs.Stats) uint64) {
		tw.family(name, typ, help)
		for _, s := range r.svcs {
			tw.sample(name, float64(v(s.Stats)), "service", r.idx.Services[s.Key.Canonical()])
		}
	}
	svc("merlin_ipvs_service_connections_total", counterType, "Connections IPVS scheduled for the service (kernel counter).", func(s ipvs.Stats) uint64 { return s.Connections })
	svc("merlin_ipvs_service_incoming_packets_total", counterType, "Packets from clients to the service (kernel counter).", func(s ipvs.Stats) uint64 { return s.InPackets })
	svc("merlin_ipvs_service_outgoing_packets_total", counterType, "Packets from the service's servers to clients through this node (NAT; kernel counter).", func(s ipvs.Stats) uint64 { return s.OutPackets })
	svc("merlin_ipvs_service_incoming_bytes_total", counterType, "Bytes from clients to the service (kernel counter).", func(s ipvs.Stats) uint64 { return s.InBytes })
	svc("merlin_ipvs_service_outgoing_bytes_total", counterType, "Bytes from the service's servers to clients through this node (kernel counter).", func(s ipvs.Stats) uint64 { return s.OutBytes })
	svc("merlin_ipvs_service_connections_per_second", gaugeType, "The kernel's estimate of the service's connection rate.", func(s ipvs.Stats) uint64 { return s.CPS })
	svc("merlin_ipvs_service_incoming_packets_per_second", gaugeType, "The kernel's estimate of the incoming packet rate.", func(s ipvs.Stats) uint64 { return s.InPPS })
	svc("merlin_ipvs_service_outgoing_packets_per_second", gaugeType, "The kernel's estimate of the outgoing packet rate.", func(s ipvs.Stats) uint64 { return s.OutPPS })
	svc("merlin_ipvs_service_incoming_bytes_per_second", gaugeType, "The kernel's estimate of the incoming byte rate.", func(s ipvs.Stats) uint64 { return s.InBPS })
	svc("merlin_ipvs_service_outgoing_bytes_per_second", gaugeType, "The kernel's estimate of the outgoing byte rate.", func(s ipvs.Stats) uint64 { return s.OutBPS })

	srv := func(name, typ, help string, v func(ipvs.DestinationStatus) float64) {
		tw.family(name, typ, help)
		for i, s := range r.svcs {
			id := r.idx.Services[s.Key.Canonical()]
			for j, d := range s.Destinations {
				tw.sample(name, v(d), "service", id, "server", r.serverLabels[i][j])
			}
		}
	}
	srv("merlin_ipvs_backend_connections_total", counterType, "Connections IPVS scheduled to the real server (kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.Connections) })
	srv("merlin_ipvs_backend_incoming_packets_total", counterType, "Packets IPVS forwarded to the real server (kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.InPackets) })
	srv("merlin_ipvs_backend_outgoing_packets_total", counterType, "Packets from the real server back through this node (NAT; kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.OutPackets) })
	srv("merlin_ipvs_backend_incoming_bytes_total", counterType, "Bytes IPVS forwarded to the real server (kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.InBytes) })
	srv("merlin_ipvs_backend_outgoing_bytes_total", counterType, "Bytes from the real server back through this node (kernel counter).", func(d ipvs.DestinationStatus) float64 { return float64(d.Stats.OutBytes) })
	srv("merlin_ipvs_backend_connections_active", gaugeType, "Established connections to the real server.", func(d ipvs.DestinationStatus) float64 { return float64(d.ActiveConnections) })
	srv("merlin_ipvs_backend_connections_inactive", gaugeType, "Connections to the real server in other states.", func(d ipvs.DestinationStatus) float64 { return float64(d.InactiveConnections) })
	srv("merlin_ipvs_backend_connections_persistent", gaugeType, "Persistence templates pointing at the real server.", func(d ipvs.DestinationStatus) float64 { return float64(d.PersistentConnections) })
	srv("merlin_ipvs_backend_weight", gaugeType, "The real server's weight in the kernel (0: no new connections).", func(d ipvs.DestinationStatus) float64 { return float64(d.Config.Weight) })

	tw.family("merlin_ipvs_stats_up", gaugeType, "1 if the last scrape read every IPVS counter in time.")
	tw.sample("merlin_ipvs_stats_up", b2f(r.ipvsOK))
	tw.family("merlin_ipvs_stats_read_seconds", gaugeType, "How long the last scrape's IPVS read took.")
	tw.sample("merlin_ipvs_stats_read_seconds", r.ipvsSeconds)
}

func writeCounters(tw *textWriter, r *trafficRead) {
	st := r.status
	one := func(name, help string, v float64) {
		tw.family(name, gaugeType, help)
		tw.sample(name, v)
	}
	one("merlin_counters_up", "1 while the eBPF counters are loaded and attached; 0 with the reason in node status and the log.", b2f(st.On))
	one("merlin_counters_keys", "Keys the eBPF counters count (VIPs, servers forwarded to, NAT servers replying).", float64(st.Keys))
	one("merlin_counters_keys_dropped", "Keys that did not fit the eBPF maps (raise -counters-max-vips / -counters-max-servers).", float64(st.Dropped))
	one("merlin_counters_unresolved_servers", "Direct-routing servers not counted yet: the node does not know their MAC address.", float64(st.Unresolved))
	tw.family("merlin_counters_attached", gaugeType, "1 for each interface and hook the counters are attached to.")
	for _, a := range st.Attached {
		tw.sample("merlin_counters_attached", 1, "interface", a.Interface, "hook", a.Hook)
	}
	if !r.snapOK {
		return
	}
	one("merlin_counters_read_seconds", "How long the last scrape's read of the eBPF counters took.", r.snapSeconds)
	writeVIPCounters(tw, r)
	writeServerCounters(tw, r)
	writePassive(tw, r)
}

func writeVIPCounters(tw *textWriter, r *trafficRead) {
	vip := func(name, help string, v func(xdpstats.Counters) uint64) {
		tw.family(name, counterType, help)
		for k, c := range r.snap.VIPs {
			if id, ok := r.idx.VIPs[k]; ok {
				tw.sample(name, float64(v(c)), "service", id)
			}
		}
	}
	vip("merlin_xdp_packets_total", "Packets to the service's VIP:port:protocol arriving at this node (XDP, before IPVS).", func(c xdpstats.Counters) uint64 { return c.Packets })
	vip("merlin_xdp_bytes_total", "Bytes (IP header on) to the service arriving at this node (XDP).", func(c xdpstats.Counters) uint64 { return c.Bytes })
	vip("merlin_xdp_syn_total", "TCP connection attempts (SYN without ACK) to the service arriving at this node (XDP).", func(c xdpstats.Counters) uint64 { return c.SYN })
	unmatched := func(name, help string, v func(xdpstats.Counters) uint64) {
		tw.family(name, counterType, help)
		for a, c := range r.snap.Unmatched {
			tw.sample(name, float64(v(c)), "vip", a.String())
		}
	}
	unmatched("merlin_xdp_unmatched_packets_total", "Packets to a VIP on a port or protocol no service has (scans, misconfigured clients).", func(c xdpstats.Counters) uint64 { return c.Packets })
	unmatched("merlin_xdp_unmatched_bytes_total", "Bytes to a VIP on a port or protocol no service has.", func(c xdpstats.Counters) uint64 { return c.Bytes })
}

func writeServerCounters(tw *textWriter, r *trafficRead) {
	server := func(m map[xdpstats.ServerKey]xdpstats.Counters, name, help string, v func(xdpstats.Counters) uint64) {
		tw.family(name, counterType, help)
		for k, c := range m {
			if l, ok := r.idx.Servers[k]; ok {
				tw.sample(name, float64(v(c)), "service", l.Service, "server", l.Server)
			}
		}
	}
	f := r.snap.Forwarded
	server(f, "merlin_tc_forwarded_packets_total", "Packets IPVS forwarded to the real server, seen leaving this node (TC).", func(c xdpstats.Counters) uint64 { return c.Packets })
	server(f, "merlin_tc_forwarded_bytes_total", "Bytes (IP header on) forwarded to the real server (TC).", func(c xdpstats.Counters) uint64 { return c.Bytes })
	server(f, "merlin_tc_forwarded_syn_total", "Connection attempts (SYN without ACK) forwarded to the real server (TC).", func(c xdpstats.Counters) uint64 { return c.SYN })
	server(f, "merlin_tc_forwarded_fin_total", "Packets with FIN forwarded to the real server (TC).", func(c xdpstats.Counters) uint64 { return c.FIN })
	server(f, "merlin_tc_forwarded_rst_total", "Packets with RST forwarded to the real server (TC).", func(c xdpstats.Counters) uint64 { return c.RST })
	rep := r.snap.Replies
	server(rep, "merlin_tc_reply_packets_total", "Packets from the NAT real server back through this node (TC).", func(c xdpstats.Counters) uint64 { return c.Packets })
	server(rep, "merlin_tc_reply_bytes_total", "Bytes from the NAT real server back through this node (TC).", func(c xdpstats.Counters) uint64 { return c.Bytes })
	server(rep, "merlin_tc_reply_synack_total", "Connection attempts the NAT real server answered (SYN-ACK) (TC).", func(c xdpstats.Counters) uint64 { return c.SYNACK })
	server(rep, "merlin_tc_reply_rst_total", "Resets from the NAT real server (refused or aborted connections) (TC).", func(c xdpstats.Counters) uint64 { return c.RST })
}

func writePassive(tw *textWriter, r *trafficRead) {
	passive := func(name, help string, v func(PassiveFigures) uint64) {
		tw.family(name, gaugeType, help)
		for k, f := range r.passive {
			if j, ok := r.idx.Passive[k]; ok {
				tw.sample(name, float64(v(f)), "service", j.Label.Service, "server", j.Label.Server)
			}
		}
	}
	passive("merlin_passive_connection_attempts", "Connection attempts (SYN) forwarded to the NAT real server in its service's passive health window.", func(f PassiveFigures) uint64 { return f.Attempts })
	passive("merlin_passive_connections_answered", "Of those, answered with a SYN-ACK.", func(f PassiveFigures) uint64 { return f.Answered })
	passive("merlin_passive_connections_refused", "Resets from the real server in the window (refused or aborted connections).", func(f PassiveFigures) uint64 { return f.Refused })
}

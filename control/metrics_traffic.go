package control

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
)

type trafficDescs struct {
	svcConns, svcInPkts, svcOutPkts, svcInBytes, svcOutBytes      *prometheus.Desc
	svcCPS, svcInPPS, svcOutPPS, svcInBPS, svcOutBPS              *prometheus.Desc
	srvConns, srvInPkts, srvOutPkts, srvInBytes, srvOutBytes      *prometheus.Desc
	srvActive, srvInactive, srvPersistent, srvWeight              *prometheus.Desc
	ipvsUp, ipvsSeconds                                           *prometheus.Desc
	xdpPkts, xdpBytes, xdpSYN, unmatchedPkts, unmatchedBytes      *prometheus.Desc
	fwdPkts, fwdBytes, fwdSYN, fwdFIN, fwdRST                     *prometheus.Desc
	replyPkts, replyBytes, replySYNACK, replyRST                  *prometheus.Desc
	countersUp, countersKeys, countersDropped, countersUnresolved *prometheus.Desc
	countersAttached                                              *prometheus.Desc
	passiveAttempts, passiveAnswered, passiveRefused              *prometheus.Desc
	countersSeconds                                               *prometheus.Desc
	all                                                           []*prometheus.Desc
}

func newTrafficDescs() trafficDescs {
	var all []*prometheus.Desc
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		d := prometheus.NewDesc(name, help, labels, nil)
		all = append(all, d)
		return d
	}
	svc := func(name, help string) *prometheus.Desc { return desc(name, help, "service") }
	srv := func(name, help string) *prometheus.Desc { return desc(name, help, "service", "server") }
	one := func(name, help string) *prometheus.Desc { return desc(name, help) }
	d := trafficDescs{
		svcConns:    svc("merlin_ipvs_service_connections_total", "Connections IPVS scheduled for the service (kernel counter)."),
		svcInPkts:   svc("merlin_ipvs_service_incoming_packets_total", "Packets from clients to the service (kernel counter)."),
		svcOutPkts:  svc("merlin_ipvs_service_outgoing_packets_total", "Packets from the service's servers to clients through this node (NAT; kernel counter)."),
		svcInBytes:  svc("merlin_ipvs_service_incoming_bytes_total", "Bytes from clients to the service (kernel counter)."),
		svcOutBytes: svc("merlin_ipvs_service_outgoing_bytes_total", "Bytes from the service's servers to clients through this node (kernel counter)."),
		svcCPS:      svc("merlin_ipvs_service_connections_per_second", "The kernel's estimate of the service's connection rate."),
		svcInPPS:    svc("merlin_ipvs_service_incoming_packets_per_second", "The kernel's estimate of the incoming packet rate."),
		svcOutPPS:   svc("merlin_ipvs_service_outgoing_packets_per_second", "The kernel's estimate of the outgoing packet rate."),
		svcInBPS:    svc("merlin_ipvs_service_incoming_bytes_per_second", "The kernel's estimate of the incoming byte rate."),
		svcOutBPS:   svc("merlin_ipvs_service_outgoing_bytes_per_second", "The kernel's estimate of the outgoing byte rate."),

		srvConns:      srv("merlin_ipvs_backend_connections_total", "Connections IPVS scheduled to the real server (kernel counter)."),
		srvInPkts:     srv("merlin_ipvs_backend_incoming_packets_total", "Packets IPVS forwarded to the real server (kernel counter)."),
		srvOutPkts:    srv("merlin_ipvs_backend_outgoing_packets_total", "Packets from the real server back through this node (NAT; kernel counter)."),
		srvInBytes:    srv("merlin_ipvs_backend_incoming_bytes_total", "Bytes IPVS forwarded to the real server (kernel counter)."),
		srvOutBytes:   srv("merlin_ipvs_backend_outgoing_bytes_total", "Bytes from the real server back through this node (kernel counter)."),
		srvActive:     srv("merlin_ipvs_backend_connections_active", "Established connections to the real server."),
		srvInactive:   srv("merlin_ipvs_backend_connections_inactive", "Connections to the real server in other states."),
		srvPersistent: srv("merlin_ipvs_backend_connections_persistent", "Persistence templates pointing at the real server."),
		srvWeight:     srv("merlin_ipvs_backend_weight", "The real server's weight in the kernel (0: no new connections)."),
		ipvsUp:        one("merlin_ipvs_stats_up", "1 if the last scrape read every IPVS counter in time."),
		ipvsSeconds:   one("merlin_ipvs_stats_read_seconds", "How long the last scrape's IPVS read took."),

		xdpPkts:        svc("merlin_xdp_packets_total", "Packets to the service's VIP:port:protocol arriving at this node (XDP, before IPVS)."),
		xdpBytes:       svc("merlin_xdp_bytes_total", "Bytes (IP header on) to the service arriving at this node (XDP)."),
		xdpSYN:         svc("merlin_xdp_syn_total", "TCP connection attempts (SYN without ACK) to the service arriving at this node (XDP)."),
		unmatchedPkts:  desc("merlin_xdp_unmatched_packets_total", "Packets to a VIP on a port or protocol no service has (scans, misconfigured clients).", "vip"),
		unmatchedBytes: desc("merlin_xdp_unmatched_bytes_total", "Bytes to a VIP on a port or protocol no service has.", "vip"),
		fwdPkts:        srv("merlin_tc_forwarded_packets_total", "Packets IPVS forwarded to the real server, seen leaving this node (TC)."),
		fwdBytes:       srv("merlin_tc_forwarded_bytes_total", "Bytes (IP header on) forwarded to the real server (TC)."),
		fwdSYN:         srv("merlin_tc_forwarded_syn_total", "Connection attempts (SYN without ACK) forwarded to the real server (TC)."),
		fwdFIN:         srv("merlin_tc_forwarded_fin_total", "Packets with FIN forwarded to the real server (TC)."),
		fwdRST:         srv("merlin_tc_forwarded_rst_total", "Packets with RST forwarded to the real server (TC)."),
		replyPkts:      srv("merlin_tc_reply_packets_total", "Packets from the NAT real server back through this node (TC)."),
		replyBytes:     srv("merlin_tc_reply_bytes_total", "Bytes from the NAT real server back through this node (TC)."),
		replySYNACK:    srv("merlin_tc_reply_synack_total", "Connection attempts the NAT real server answered (SYN-ACK) (TC)."),
		replyRST:       srv("merlin_tc_reply_rst_total", "Resets from the NAT real server (refused or aborted connections) (TC)."),

		countersUp:         one("merlin_counters_up", "1 while the eBPF counters are loaded and attached; 0 with the reason in node status and the log."),
		countersKeys:       one("merlin_counters_keys", "Keys the eBPF counters count (VIPs, servers forwarded to, NAT servers replying)."),
		countersDropped:    one("merlin_counters_keys_dropped", "Keys that did not fit the eBPF maps (raise -counters-max-vips / -counters-max-servers)."),
		countersUnresolved: one("merlin_counters_unresolved_servers", "Direct-routing servers not counted yet: the node does not know their MAC address."),
		passiveAttempts:    srv("merlin_passive_connection_attempts", "Connection attempts (SYN) forwarded to the NAT real server in its service's passive health window."),
		passiveAnswered:    srv("merlin_passive_connections_answered", "Of those, answered with a SYN-ACK."),
		passiveRefused:     srv("merlin_passive_connections_refused", "Resets from the real server in the window (refused or aborted connections)."),
		countersSeconds:    one("merlin_counters_read_seconds", "How long the last scrape's read of the eBPF counters took."),
		countersAttached:   desc("merlin_counters_attached", "1 for each interface and hook the counters are attached to.", "interface", "hook"),
	}
	d.all = all
	return d
}

func (t *Traffic) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range t.descs.all {
		ch <- d
	}
}

func (t *Traffic) Collect(ch chan<- prometheus.Metric) {
	idx := t.index()
	if t.kernel != nil {
		t.collectIPVS(ch, idx)
	}
	if t.counters != nil {
		t.collectCounters(ch, idx)
	}
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

// collectIPVS reads the kernel's counters of merlin's services, within the
// scrape timeout; a read cut short exports what it got and says so.
func (t *Traffic) collectIPVS(ch chan<- prometheus.Metric, idx CounterIndex) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), t.timeout)
	defer cancel()
	ok := t.readIPVS(ctx, ch, idx)
	d := &t.descs
	gauge(ch, d.ipvsUp, b2f(ok))
	gauge(ch, d.ipvsSeconds, time.Since(start).Seconds())
}

func (t *Traffic) readIPVS(ctx context.Context, ch chan<- prometheus.Metric, idx CounterIndex) bool {
	d := &t.descs
	svcs, err := t.kernel.Stats(ctx, func(k ipvs.ServiceKey) bool { _, ok := idx.Services[k.Canonical()]; return ok })
	if err != nil {
		return false
	}
	for _, s := range svcs {
		id := idx.Services[s.Key.Canonical()]
		st := s.Stats
		counter(ch, d.svcConns, st.Connections, id)
		counter(ch, d.svcInPkts, st.InPackets, id)
		counter(ch, d.svcOutPkts, st.OutPackets, id)
		counter(ch, d.svcInBytes, st.InBytes, id)
		counter(ch, d.svcOutBytes, st.OutBytes, id)
		gauge(ch, d.svcCPS, float64(st.CPS), id)
		gauge(ch, d.svcInPPS, float64(st.InPPS), id)
		gauge(ch, d.svcOutPPS, float64(st.OutPPS), id)
		gauge(ch, d.svcInBPS, float64(st.InBPS), id)
		gauge(ch, d.svcOutBPS, float64(st.OutBPS), id)
		for _, ds := range s.Destinations {
			t.collectBackend(ch, id, ds)
		}
	}
	return true
}

func (t *Traffic) collectBackend(ch chan<- prometheus.Metric, id string, ds ipvs.DestinationStatus) {
	d := &t.descs
	server, st := ds.Key.String(), ds.Stats
	counter(ch, d.srvConns, st.Connections, id, server)
	counter(ch, d.srvInPkts, st.InPackets, id, server)
	counter(ch, d.srvOutPkts, st.OutPackets, id, server)
	counter(ch, d.srvInBytes, st.InBytes, id, server)
	counter(ch, d.srvOutBytes, st.OutBytes, id, server)
	gauge(ch, d.srvActive, float64(ds.ActiveConnections), id, server)
	gauge(ch, d.srvInactive, float64(ds.InactiveConnections), id, server)
	gauge(ch, d.srvPersistent, float64(ds.PersistentConnections), id, server)
	gauge(ch, d.srvWeight, float64(ds.Config.Weight), id, server)
}

func (t *Traffic) collectCounters(ch chan<- prometheus.Metric, idx CounterIndex) {
	d := &t.descs
	st := t.counters.Status()
	gauge(ch, d.countersUp, b2f(st.On))
	gauge(ch, d.countersKeys, float64(st.Keys))
	gauge(ch, d.countersDropped, float64(st.Dropped))
	gauge(ch, d.countersUnresolved, float64(st.Unresolved))
	for _, a := range st.Attached {
		gauge(ch, d.countersAttached, 1, a.Interface, a.Hook)
	}
	if !st.On {
		return
	}
	start := time.Now()
	snap, err := t.counters.Read()
	if err != nil {
		return
	}
	gauge(ch, d.countersSeconds, time.Since(start).Seconds())
	for k, c := range snap.VIPs {
		if id, ok := idx.VIPs[k]; ok {
			counter(ch, d.xdpPkts, c.Packets, id)
			counter(ch, d.xdpBytes, c.Bytes, id)
			counter(ch, d.xdpSYN, c.SYN, id)
		}
	}
	for a, c := range snap.Unmatched {
		counter(ch, d.unmatchedPkts, c.Packets, a.String())
		counter(ch, d.unmatchedBytes, c.Bytes, a.String())
	}
	for k, c := range snap.Forwarded {
		if l, ok := idx.Servers[k]; ok {
			counter(ch, d.fwdPkts, c.Packets, l.Service, l.Server)
			counter(ch, d.fwdBytes, c.Bytes, l.Service, l.Server)
			counter(ch, d.fwdSYN, c.SYN, l.Service, l.Server)
			counter(ch, d.fwdFIN, c.FIN, l.Service, l.Server)
			counter(ch, d.fwdRST, c.RST, l.Service, l.Server)
		}
	}
	t.collectPassive(ch, idx)
	for k, c := range snap.Replies {
		if l, ok := idx.Servers[k]; ok {
			counter(ch, d.replyPkts, c.Packets, l.Service, l.Server)
			counter(ch, d.replyBytes, c.Bytes, l.Service, l.Server)
			counter(ch, d.replySYNACK, c.SYNACK, l.Service, l.Server)
			counter(ch, d.replyRST, c.RST, l.Service, l.Server)
		}
	}
}

func (t *Traffic) collectPassive(ch chan<- prometheus.Metric, idx CounterIndex) {
	d := &t.descs
	t.passive.mu.Lock()
	defer t.passive.mu.Unlock()
	for k, f := range t.passive.figures {
		j, ok := idx.Passive[k]
		if !ok {
			continue
		}
		gauge(ch, d.passiveAttempts, float64(f.Attempts), j.Label.Service, j.Label.Server)
		gauge(ch, d.passiveAnswered, float64(f.Answered), j.Label.Service, j.Label.Server)
		gauge(ch, d.passiveRefused, float64(f.Refused), j.Label.Service, j.Label.Server)
	}
}

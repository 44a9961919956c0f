package node

import (
	"context"
	"io"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
)

// renderedFamily is one metric family as the last background read left
// it: label sets already in the text format, so that a scrape only copies.
type renderedFamily struct {
	name, typ, help string
	labels          []string // `{service="…",server="…"}` per sample, shared between families
	values          []float64
}

// partRead is one part of a background read (the kernel's IPVS counters or
// the eBPF maps): when it began, how long it took, what it found.
type partRead struct {
	began    time.Time
	seconds  float64
	complete bool
	families []renderedFamily
}

// WriteMetrics writes the traffic metrics in the Prometheus text format:
// the last background read's counters (with their age) and the counters'
// state now. It reads nothing from the kernel; the background read waits
// while a scrape writes.
func (t *Traffic) WriteMetrics(ctx context.Context, w io.Writer) error {
	t.writing.Add(1)
	defer t.writing.Add(-1)
	now := time.Now()
	tw := newTextWriter(w)
	if t.kernel != nil {
		writeIPVS(ctx, tw, t.ipvsRead.Load(), now)
	}
	if t.counters != nil {
		t.writeCounters(ctx, tw, t.countersRead.Load(), now)
	}
	return tw.flush()
}

const (
	counterType = "counter"
	gaugeType   = "gauge"
)

func writeIPVS(ctx context.Context, tw *textWriter, r *partRead, now time.Time) {
	if r != nil {
		writeRendered(ctx, tw, r.families)
	}
	tw.family("merlin_ipvs_stats_up", gaugeType, "1 if the last background read of the kernel's IPVS counters read every one in time (-metrics-read-timeout).")
	tw.sample("merlin_ipvs_stats_up", b2f(r != nil && r.complete))
	if r == nil {
		return
	}
	tw.family("merlin_ipvs_stats_read_seconds", gaugeType, "How long the last background read of the kernel's IPVS counters took.")
	tw.sample("merlin_ipvs_stats_read_seconds", r.seconds)
	tw.family("merlin_ipvs_stats_age_seconds", gaugeType, "Seconds since the exported IPVS counters began to be read (reads run every -metrics-read-interval).")
	tw.sample("merlin_ipvs_stats_age_seconds", now.Sub(r.began).Seconds())
}

func (t *Traffic) writeCounters(ctx context.Context, tw *textWriter, r *partRead, now time.Time) {
	st := t.counters.Status()
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
	if r != nil {
		one("merlin_counters_read_seconds", "How long the last background read of the eBPF counters took.", r.seconds)
		one("merlin_counters_age_seconds", "Seconds since the exported eBPF counters were read (reads run every -metrics-read-interval).", now.Sub(r.began).Seconds())
		writeRendered(ctx, tw, r.families)
	}
	t.writePassive(tw)
}

// writeRendered writes families; a scrape whose client went away stops.
func writeRendered(ctx context.Context, tw *textWriter, fams []renderedFamily) {
	for i := range fams {
		if ctx.Err() != nil {
			return
		}
		f := &fams[i]
		tw.family(f.name, f.typ, f.help)
		for j, l := range f.labels {
			tw.rendered(f.name, l, f.values[j])
		}
	}
}

// writePassive writes passive health's window as its judge last saw it
// (servers with passive health only; cheap to read on the scrape).
func (t *Traffic) writePassive(tw *textWriter) {
	judged, figures := t.index.passiveJudges(), t.passive.lastFigures()
	for _, f := range t.backend {
		if f.source != fromPassive {
			continue
		}
		tw.family(f.name, f.typ, f.help)
		for k, fig := range figures {
			if j, ok := judged[k]; ok {
				tw.sample(f.name, float64(f.passive(fig)), "service", j.Label.Service, "server", j.Label.Server)
			}
		}
	}
}

// serviceFamilies are the kernel's per-service counters, always exported.
var serviceFamilies = []struct {
	name, typ, help string
	v               func(ipvs.Stats) uint64
}{
	{"merlin_ipvs_service_connections_total", counterType, "Connections IPVS scheduled for the service (kernel counter).", func(s ipvs.Stats) uint64 { return s.Connections }},
	{"merlin_ipvs_service_incoming_packets_total", counterType, "Packets from clients to the service (kernel counter).", func(s ipvs.Stats) uint64 { return s.InPackets }},
	{"merlin_ipvs_service_outgoing_packets_total", counterType, "Packets from the service's servers to clients through this node (NAT; kernel counter).", func(s ipvs.Stats) uint64 { return s.OutPackets }},
	{"merlin_ipvs_service_incoming_bytes_total", counterType, "Bytes from clients to the service (kernel counter).", func(s ipvs.Stats) uint64 { return s.InBytes }},
	{"merlin_ipvs_service_outgoing_bytes_total", counterType, "Bytes from the service's servers to clients through this node (kernel counter).", func(s ipvs.Stats) uint64 { return s.OutBytes }},
	{"merlin_ipvs_service_connections_per_second", gaugeType, "The kernel's estimate of the service's connection rate.", func(s ipvs.Stats) uint64 { return s.CPS }},
	{"merlin_ipvs_service_incoming_packets_per_second", gaugeType, "The kernel's estimate of the incoming packet rate.", func(s ipvs.Stats) uint64 { return s.InPPS }},
	{"merlin_ipvs_service_outgoing_packets_per_second", gaugeType, "The kernel's estimate of the outgoing packet rate.", func(s ipvs.Stats) uint64 { return s.OutPPS }},
	{"merlin_ipvs_service_incoming_bytes_per_second", gaugeType, "The kernel's estimate of the incoming byte rate.", func(s ipvs.Stats) uint64 { return s.InBPS }},
	{"merlin_ipvs_service_outgoing_bytes_per_second", gaugeType, "The kernel's estimate of the outgoing byte rate.", func(s ipvs.Stats) uint64 { return s.OutBPS }},
}

// renderIPVS turns one read of the kernel's counters into families: every
// per-service one, and the per-backend ones chosen.
func (t *Traffic) renderIPVS(idx CounterIndex, svcs []ipvs.ServiceStats) []renderedFamily {
	var lb labelBuf
	svcLabels := make([]string, len(svcs))
	servers := 0
	for i, s := range svcs {
		svcLabels[i] = lb.render("service", idx.Services[s.Key.Canonical()])
		servers += len(s.Destinations)
	}
	out := make([]renderedFamily, 0, len(serviceFamilies)+len(t.backend))
	for _, f := range serviceFamilies {
		values := make([]float64, len(svcs))
		for i, s := range svcs {
			values[i] = float64(f.v(s.Stats))
		}
		out = append(out, renderedFamily{name: f.name, typ: f.typ, help: f.help, labels: svcLabels, values: values})
	}
	var srvLabels []string
	for _, f := range t.backend {
		if f.source != fromIPVS {
			continue
		}
		if srvLabels == nil {
			srvLabels = make([]string, 0, servers)
			for _, s := range svcs {
				id := idx.Services[s.Key.Canonical()]
				for _, d := range s.Destinations {
					srvLabels = append(srvLabels, lb.render("service", id, "server", d.Key.String()))
				}
			}
		}
		values := make([]float64, 0, servers)
		for _, s := range svcs {
			for _, d := range s.Destinations {
				values = append(values, f.ipvs(d))
			}
		}
		out = append(out, renderedFamily{name: f.name, typ: f.typ, help: f.help, labels: srvLabels, values: values})
	}
	return out
}

// renderCounters turns one read of the eBPF maps into families: per VIP,
// per unmatched VIP, and the per-backend ones chosen.
func (t *Traffic) renderCounters(idx CounterIndex, snap xdpstats.Snapshot) []renderedFamily {
	var lb labelBuf
	var out []renderedFamily
	vipLabels := make([]string, 0, len(snap.VIPs))
	vipCounts := make([]xdpstats.Counters, 0, len(snap.VIPs))
	for k, c := range snap.VIPs {
		if id, ok := idx.VIPs[k]; ok {
			vipLabels = append(vipLabels, lb.render("service", id))
			vipCounts = append(vipCounts, c)
		}
	}
	out = appendCounterFamilies(out, vipLabels, vipCounts, vipFamilies)
	unmatchedLabels := make([]string, 0, len(snap.Unmatched))
	unmatchedCounts := make([]xdpstats.Counters, 0, len(snap.Unmatched))
	for a, c := range snap.Unmatched {
		unmatchedLabels = append(unmatchedLabels, lb.render("vip", a.String()))
		unmatchedCounts = append(unmatchedCounts, c)
	}
	out = appendCounterFamilies(out, unmatchedLabels, unmatchedCounts, unmatchedFamilies)
	out = t.appendServerFamilies(out, &lb, idx, snap.Forwarded, fromTCForwarded)
	return t.appendServerFamilies(out, &lb, idx, snap.Replies, fromTCReply)
}

// counterFamily is a family read from one eBPF counter of a key.
type counterFamily struct {
	name, help string
	v          func(xdpstats.Counters) uint64
}

var vipFamilies = []counterFamily{
	{"merlin_xdp_packets_total", "Packets to the service's VIP:port:protocol arriving at this node (XDP, before IPVS).", func(c xdpstats.Counters) uint64 { return c.Packets }},
	{"merlin_xdp_bytes_total", "Bytes (IP header on) to the service arriving at this node (XDP).", func(c xdpstats.Counters) uint64 { return c.Bytes }},
	{"merlin_xdp_syn_total", "TCP connection attempts (SYN without ACK) to the service arriving at this node (XDP).", func(c xdpstats.Counters) uint64 { return c.SYN }},
}

var unmatchedFamilies = []counterFamily{
	{"merlin_xdp_unmatched_packets_total", "Packets to a VIP on a port or protocol no service has (scans, misconfigured clients).", func(c xdpstats.Counters) uint64 { return c.Packets }},
	{"merlin_xdp_unmatched_bytes_total", "Bytes to a VIP on a port or protocol no service has.", func(c xdpstats.Counters) uint64 { return c.Bytes }},
}

func appendCounterFamilies(out []renderedFamily, labels []string, counts []xdpstats.Counters, fams []counterFamily) []renderedFamily {
	for _, f := range fams {
		values := make([]float64, len(counts))
		for i, c := range counts {
			values[i] = float64(f.v(c))
		}
		out = append(out, renderedFamily{name: f.name, typ: counterType, help: f.help, labels: labels, values: values})
	}
	return out
}

// appendServerFamilies renders the chosen per-backend families of one TC
// map; labels are built only when one of them is chosen.
func (t *Traffic) appendServerFamilies(out []renderedFamily, lb *labelBuf, idx CounterIndex, m map[xdpstats.ServerKey]xdpstats.Counters, src backendSource) []renderedFamily {
	var labels []string
	var counts []xdpstats.Counters
	for _, f := range t.backend {
		if f.source != src {
			continue
		}
		if labels == nil {
			labels, counts = make([]string, 0, len(m)), make([]xdpstats.Counters, 0, len(m))
			for k, c := range m {
				if l, ok := idx.Servers[k]; ok {
					labels = append(labels, lb.render("service", l.Service, "server", l.Server))
					counts = append(counts, c)
				}
			}
		}
		values := make([]float64, len(counts))
		for i, c := range counts {
			values[i] = float64(f.counter(c))
		}
		out = append(out, renderedFamily{name: f.name, typ: f.typ, help: f.help, labels: labels, values: values})
	}
	return out
}

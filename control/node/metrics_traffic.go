package node

import (
	"context"
	"io"
	"net/netip"
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

// sampleSet gathers one group of families sharing their label sets as a
// read hands their samples over: one label set per sample, a value per
// family. Nothing of the read is kept but these.
type sampleSet struct {
	fams   []renderedFamily // name, type, help; values filled by add
	labels []string
}

// newSampleSet prepares the families named for about size samples (a hint).
func newSampleSet(size int, fams ...renderedFamily) *sampleSet {
	s := &sampleSet{fams: fams}
	if len(fams) > 0 {
		s.labels = make([]string, 0, size)
		for i := range s.fams {
			s.fams[i].values = make([]float64, 0, size)
		}
	}
	return s
}

func (s *sampleSet) chosen() bool { return len(s.fams) > 0 }

// add appends one sample: its label set and each family's value, v(i).
func (s *sampleSet) add(labels string, v func(i int) float64) {
	s.labels = append(s.labels, labels)
	for i := range s.fams {
		s.fams[i].values = append(s.fams[i].values, v(i))
	}
}

// appendTo appends the families, each with the shared label sets.
func (s *sampleSet) appendTo(out []renderedFamily) []renderedFamily {
	for _, f := range s.fams {
		f.labels = s.labels
		out = append(out, f)
	}
	return out
}

// ipvsRender renders a read of the kernel's counters a service at a time:
// every per-service family, and the per-backend ones chosen.
type ipvsRender struct {
	idx      *planIndex
	lb       labelBuf
	services *sampleSet
	servers  *sampleSet
	backend  []backendFamily // the servers' families, in order
	read     int             // services read
}

func (t *Traffic) newIPVSRender() *ipvsRender {
	r := &ipvsRender{idx: t.index}
	var svc, srv []renderedFamily
	for _, f := range serviceFamilies {
		svc = append(svc, renderedFamily{name: f.name, typ: f.typ, help: f.help})
	}
	for _, f := range t.backend {
		if f.source == fromIPVS {
			srv = append(srv, renderedFamily{name: f.name, typ: f.typ, help: f.help})
			r.backend = append(r.backend, f)
		}
	}
	_, servers, services := t.index.sizes()
	r.services = newSampleSet(services, svc...)
	r.servers = newSampleSet(servers, srv...)
	return r
}

// add renders one service's counters (ss.Destinations is not kept).
func (r *ipvsRender) add(ss ipvs.ServiceStats) {
	r.read++
	id, ok := r.idx.service(ss.Key.Canonical())
	if !ok {
		return // gone from the plan since the read chose it
	}
	r.services.add(r.lb.render("service", id), func(i int) float64 { return float64(serviceFamilies[i].v(ss.Stats)) })
	if !r.servers.chosen() {
		return
	}
	for _, d := range ss.Destinations {
		r.servers.add(r.lb.render("service", id, "server", d.Key.String()), func(i int) float64 { return r.backend[i].ipvs(d) })
	}
}

func (r *ipvsRender) families() []renderedFamily {
	return r.servers.appendTo(r.services.appendTo(nil))
}

// readCounterFamilies reads the eBPF maps into families: per VIP, per
// unmatched VIP, and the per-backend ones chosen (a map no chosen family
// needs is not read).
func (t *Traffic) readCounterFamilies() ([]renderedFamily, error) {
	var lb labelBuf
	nVIPs, nServers, _ := t.index.sizes()
	vips := newSampleSet(nVIPs, counterFamilies(vipFamilies)...)
	unmatched := newSampleSet(0, counterFamilies(unmatchedFamilies)...)
	forwarded, replies := t.tcSampleSet(fromTCForwarded, nServers), t.tcSampleSet(fromTCReply, nServers)
	v := xdpstats.Visit{
		VIP: func(k xdpstats.VIPKey, c xdpstats.Counters) {
			if id, ok := t.index.vip(k); ok {
				vips.add(lb.render("service", id), func(i int) float64 { return float64(vipFamilies[i].v(c)) })
			}
		},
		Unmatched: func(a netip.Addr, c xdpstats.Counters) {
			unmatched.add(lb.render("vip", a.String()), func(i int) float64 { return float64(unmatchedFamilies[i].v(c)) })
		},
		Forwarded: forwarded.visit(&lb, t.index),
		Reply:     replies.visit(&lb, t.index),
	}
	if err := t.counters.ReadEach(v); err != nil {
		return nil, err
	}
	out := unmatched.appendTo(vips.appendTo(nil))
	return replies.appendTo(forwarded.appendTo(out)), nil
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

func counterFamilies(fams []counterFamily) []renderedFamily {
	out := make([]renderedFamily, len(fams))
	for i, f := range fams {
		out[i] = renderedFamily{name: f.name, typ: counterType, help: f.help}
	}
	return out
}

// tcSet is the chosen per-backend families of one TC map.
type tcSet struct {
	*sampleSet
	backend []backendFamily
}

func (t *Traffic) tcSampleSet(src backendSource, size int) tcSet {
	var s tcSet
	var fams []renderedFamily
	for _, f := range t.backend {
		if f.source == src {
			fams = append(fams, renderedFamily{name: f.name, typ: f.typ, help: f.help})
			s.backend = append(s.backend, f)
		}
	}
	s.sampleSet = newSampleSet(size, fams...)
	return s
}

// visit is the read's function for the map (nil: none chosen, not read).
func (s tcSet) visit(lb *labelBuf, idx *planIndex) func(xdpstats.ServerKey, xdpstats.Counters) {
	if !s.chosen() {
		return nil
	}
	return func(k xdpstats.ServerKey, c xdpstats.Counters) {
		if l, ok := idx.server(k); ok {
			s.add(l.labels, func(i int) float64 { return float64(s.backend[i].counter(c)) })
		}
	}
}

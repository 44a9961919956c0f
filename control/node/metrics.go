package node

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/internal/chunklist"
	"github.com/merlin-ipvs/merlin/types"
)

// NodeMetrics are the node runner's Prometheus metrics.
type NodeMetrics struct {
	reconcileDuration *prometheus.HistogramVec
	reconcileErrors   prometheus.Counter
	ops               *prometheus.CounterVec
	opErrors          *prometheus.CounterVec
	desiredRevision   prometheus.Gauge
	appliedRevision   prometheus.Gauge
	invalidKeys       prometheus.Gauge
	ownedServices     prometheus.Gauge
	objectErrors      prometheus.Gauge
	guardHeld         prometheus.Gauge
	serviceDown       *prometheus.GaugeVec
	resyncs           prometheus.Counter
	passCauses        *prometheus.CounterVec
	sinkUp            *prometheus.GaugeVec
	sinkErrors        *prometheus.CounterVec
	vips              *prometheus.GaugeVec
	vipAnnounced      *prometheus.GaugeVec
	vipBandwidth      *prometheus.GaugeVec
	serviceBelow      *prometheus.GaugeVec
	bandwidthShare    prometheus.Gauge
	changeApply       prometheus.Histogram
	reportedServices  map[string]bool // merlin_service_all_servers_down as last set
	// serverHealth is merlin_server_up: the node plan's own immutable list
	// of checked servers, written on each scrape (WriteMetrics) instead of
	// kept again as a client_golang gauge per server (≈45 MiB at 100,000).
	serverHealth atomic.Pointer[chunklist.List[*types.ServerHealth]]
}

// NewNodeMetrics creates the metrics and registers them (reg may be nil).
func NewNodeMetrics(reg prometheus.Registerer) *NodeMetrics {
	m := &NodeMetrics{
		reconcileDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "merlin_reconcile_duration_seconds", Help: "Time of one reconcile pass, by kind (event: a desired-state change; resync: with a full kernel read).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"kind"}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "merlin_reconcile_errors_total", Help: "Reconcile passes that could not complete."}),
		ops:             prometheus.NewCounterVec(prometheus.CounterOpts{Name: "merlin_ipvs_ops_total", Help: "IPVS netlink write operations sent, by op."}, []string{"op"}),
		opErrors:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "merlin_ipvs_op_errors_total", Help: "IPVS write operations the kernel refused or that did not complete, by op and error."}, []string{"op", "error"}),
		desiredRevision: prometheus.NewGauge(prometheus.GaugeOpts{Name: "merlin_desired_revision", Help: "etcd revision of the desired state this node has seen."}),
		appliedRevision: prometheus.NewGauge(prometheus.GaugeOpts{Name: "merlin_applied_revision", Help: "etcd revision of the desired state last applied completely (apart from per-object errors)."}),
		invalidKeys:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "merlin_invalid_keys", Help: "etcd keys of the desired state whose values could not be used."}),
		ownedServices:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "merlin_owned_services", Help: "Kernel IPVS services merlin owns on this node."}),
		objectErrors:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "merlin_object_errors", Help: "Desired objects the kernel currently refuses (retried with backoff)."}),
		guardHeld:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "merlin_deletion_guard_held", Help: "1 while a mass deletion waits for confirmation."}),
		resyncs:         prometheus.NewCounter(prometheus.CounterOpts{Name: "merlin_resyncs_total", Help: "Background reads of the whole kernel table compared with what merlin wrote."}),
		passCauses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "merlin_reconcile_causes_total",
			Help: "Reconcile passes by what woke them (update: a desired-state change; health: a check changed state; resync: the background kernel read; retry: a failure's backoff ended; repair: a kernel object removed behind merlin's back; warm-up: the connection sync warm-up started again)."}, []string{"cause"}),
		serviceDown:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "merlin_service_all_servers_down", Help: "1 for a service whose servers are all down on this node."}, []string{"service"}),
		sinkUp:       prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "merlin_sink_up", Help: "1 while the last update of a part of the dataplane (ipvs, vips, ...) worked, 0 while it fails."}, []string{"sink"}),
		sinkErrors:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "merlin_sink_errors_total", Help: "Failed updates of a part of the dataplane, by sink."}, []string{"sink"}),
		vips:         prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "merlin_vips", Help: "VIPs of the desired state on this node, by whether the node can serve them (serving, not_serving)."}, []string{"state"}),
		vipAnnounced: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "merlin_vip_announced", Help: "Per VIP: 1 while this node's plan announces it by BGP, 0 while withdrawn (state says why: serving, draining, drained, no_healthy_server, below_threshold, not_ready, ipvs_failed)."}, []string{"vip", "state"}),
		vipBandwidth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "merlin_vip_link_bandwidth_bytes",
			Help: "Per announced VIP that carries the BGP link-bandwidth community: the bandwidth this node's plan gives it, bytes per second (routers get it within -link-bandwidth-interval)."}, []string{"vip"}),
		serviceBelow: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "merlin_service_below_threshold",
			Help: "1 for a service below its healthy threshold on this node, with the action taken (keep_serving, withdraw, sorry); no series otherwise."}, []string{"service", "action"}),
		bandwidthShare: prometheus.NewGauge(prometheus.GaugeOpts{Name: "merlin_drain_link_bandwidth_share",
			Help: "Share of its link bandwidth this node announces: 1, lower while a drain ramps it down."}),
		changeApply: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "merlin_change_apply_seconds",
			Help:    "Time from a desired-state change arriving from etcd to the end of the pass that applied it (kernel writes acknowledged): merlin's own share of a change.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		reportedServices: map[string]bool{},
	}
	for _, op := range []ipvs.OpKind{ipvs.OpAddService, ipvs.OpUpdateService, ipvs.OpDeleteService, ipvs.OpAddDestination, ipvs.OpUpdateDestination, ipvs.OpDeleteDestination} {
		m.ops.WithLabelValues(opLabel(op)) // exported as 0 before the first op
		for _, e := range []string{"not_sent", "outcome_unknown", "other"} {
			m.opErrors.WithLabelValues(opLabel(op), e)
		}
	}
	m.bandwidthShare.Set(1)
	for _, st := range []string{string(VIPServed), "not_serving"} {
		m.vips.WithLabelValues(st)
	}
	if reg != nil {
		reg.MustRegister(m.reconcileDuration, m.reconcileErrors, m.ops, m.opErrors, m.desiredRevision, m.appliedRevision,
			m.invalidKeys, m.ownedServices, m.objectErrors, m.guardHeld, m.serviceDown, m.resyncs, m.passCauses,
			m.sinkUp, m.sinkErrors, m.vips, m.vipAnnounced, m.vipBandwidth, m.serviceBelow, m.bandwidthShare, m.changeApply)
	}
	return m
}

// declareSinks exports every sink's series before its first update.
func (m *NodeMetrics) declareSinks(names []string) {
	for _, n := range names {
		m.sinkUp.WithLabelValues(n).Set(1)
		m.sinkErrors.WithLabelValues(n)
	}
}

func (m *NodeMetrics) setSink(name string, err error) {
	if err != nil {
		m.sinkUp.WithLabelValues(name).Set(0)
		m.sinkErrors.WithLabelValues(name).Inc()
		return
	}
	m.sinkUp.WithLabelValues(name).Set(1)
}

// setServicesDown exports merlin_service_all_servers_down for every planned
// service: 1 when all its servers are down, 0 otherwise (set on change).
func (m *NodeMetrics) setServicesDown(plans map[string]*ServicePlan, down map[string]bool) {
	for id := range plans {
		if was, ok := m.reportedServices[id]; !ok || was != down[id] {
			m.serviceDown.WithLabelValues(id).Set(b2f(down[id]))
			m.reportedServices[id] = down[id]
		}
	}
	for id := range m.reportedServices {
		if _, ok := plans[id]; !ok {
			m.serviceDown.DeleteLabelValues(id)
			delete(m.reportedServices, id)
		}
	}
}

// setServiceDown exports merlin_service_all_servers_down for one service
// (none for a service that is gone).
func (m *NodeMetrics) setServiceDown(id string, exists, down bool) {
	if !exists {
		if _, ok := m.reportedServices[id]; ok {
			m.serviceDown.DeleteLabelValues(id)
			delete(m.reportedServices, id)
		}
		return
	}
	if was, ok := m.reportedServices[id]; !ok || was != down {
		m.serviceDown.WithLabelValues(id).Set(b2f(down))
		m.reportedServices[id] = down
	}
}

// setServerHealth sets merlin_server_up to exactly the checked servers of
// the node plan (sorted by service; never changed once in a plan).
func (m *NodeMetrics) setServerHealth(servers chunklist.List[*types.ServerHealth]) {
	m.serverHealth.Store(&servers)
}

const serverUpHelp = "Health of each checked real server as this node sees it (1 up, 0 down)."

// WriteMetrics writes merlin_server_up in the Prometheus text format (the
// registry gathers the rest); a scrape whose client went away stops.
func (m *NodeMetrics) WriteMetrics(ctx context.Context, w io.Writer) error {
	servers := m.serverHealth.Load()
	if servers == nil || servers.Len() == 0 {
		return nil
	}
	tw := newTextWriter(w)
	tw.family("merlin_server_up", gaugeType, serverUpHelp)
	n := 0
	for sh := range servers.All() {
		if n++; n%4096 == 0 && ctx.Err() != nil {
			break
		}
		tw.sample("merlin_server_up", b2f(sh.GetUp()), "service", sh.GetServiceId(), "server", sh.GetServer())
	}
	return tw.flush()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func opLabel(k ipvs.OpKind) string {
	switch k {
	case ipvs.OpAddService:
		return "add_service"
	case ipvs.OpUpdateService:
		return "update_service"
	case ipvs.OpDeleteService:
		return "delete_service"
	case ipvs.OpAddDestination:
		return "add_destination"
	case ipvs.OpUpdateDestination:
		return "update_destination"
	case ipvs.OpDeleteDestination:
		return "delete_destination"
	}
	return "unknown"
}

// errorLabel names an op error by errno, with a bounded set of values.
func errorLabel(err error) string {
	var errno unix.Errno
	switch {
	case errors.Is(err, ipvs.ErrNotSent):
		return "not_sent"
	case errors.Is(err, ipvs.ErrOutcomeUnknown):
		return "outcome_unknown"
	case errors.As(err, &errno):
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
	}
	return "other"
}

// WatcherCollector exports a Watcher's re-list counts and invalid keys.
type WatcherCollector struct {
	w       *store.Watcher
	relists *prometheus.Desc
}

// NewWatcherCollector collects w's counters on every scrape.
func NewWatcherCollector(w *store.Watcher) *WatcherCollector {
	return &WatcherCollector{w: w, relists: prometheus.NewDesc("merlin_watch_relists_total", "Full lists of the desired state, by reason (start, compacted, closed, silent, periodic).", []string{"reason"}, nil)}
}

func (c *WatcherCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.relists }

func (c *WatcherCollector) Collect(ch chan<- prometheus.Metric) {
	for reason, n := range c.w.Relists() {
		ch <- prometheus.MustNewConstMetric(c.relists, prometheus.CounterValue, float64(n), reason)
	}
}

// HealthMetrics turn health check results into Prometheus metrics.
type HealthMetrics struct {
	duration    *prometheus.HistogramVec
	failures    *prometheus.CounterVec
	transitions *prometheus.CounterVec
}

// NewHealthMetrics creates the metrics and registers them (reg may be nil).
func NewHealthMetrics(reg prometheus.Registerer) *HealthMetrics {
	m := &HealthMetrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "merlin_health_check_duration_seconds", Help: "Time of one health probe, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"kind"}),
		failures:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "merlin_health_check_failures_total", Help: "Failed health probes by kind and reason (timeout, refused, status, body, tls, reset, exit, other)."}, []string{"kind", "reason"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "merlin_health_transitions_total", Help: "Health state changes of checks, by kind and new state."}, []string{"kind", "to"}),
	}
	// Exported as 0 before the first probe, so rate() and alerts see the first one.
	for _, k := range []health.Kind{health.HTTP, health.HTTPS, health.TCP, health.UDP, health.GRPC, health.Exec} {
		m.transitions.WithLabelValues(string(k), "up")
		m.transitions.WithLabelValues(string(k), "down")
		for _, r := range []string{health.ReasonTimeout, health.ReasonRefused, health.ReasonStatus, health.ReasonBody, health.ReasonTLS, health.ReasonReset, health.ReasonExit, health.ReasonOther} {
			m.failures.WithLabelValues(string(k), r)
		}
	}
	if reg != nil {
		reg.MustRegister(m.duration, m.failures, m.transitions)
	}
	return m
}

// Probed implements health.Observer.
func (m *HealthMetrics) Probed(c health.Check, took time.Duration, err error) {
	m.duration.WithLabelValues(string(c.Kind)).Observe(took.Seconds())
	if err != nil {
		m.failures.WithLabelValues(string(c.Kind), health.Reason(err)).Inc()
	}
}

// Transition implements health.Observer.
func (m *HealthMetrics) Transition(c health.Check, up bool) {
	to := "down"
	if up {
		to = "up"
	}
	m.transitions.WithLabelValues(string(c.Kind), to).Inc()
}

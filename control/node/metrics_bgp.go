package node

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/merlin-ipvs/merlin/bgp"
)

// PeerLister is the part of bgp.Speaker the metrics read.
type PeerLister interface {
	Peers(ctx context.Context) ([]bgp.PeerStatus, error)
	Announced() []bgp.Route
	RefusedConnections() uint64
}

// bgpCollector reads the speaker's sessions on each scrape.
type bgpCollector struct {
	s                                          PeerLister
	up, transitions, updates, sent, recv, shut *prometheus.Desc
	routes, refused, restarts                  *prometheus.Desc
	bfdUp, bfdFlaps, bfdDetect                 *prometheus.Desc
}

// NewBGPCollector exports the speaker's sessions, labelled by peer
// address (bounded by the configuration).
func NewBGPCollector(s PeerLister) prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, []string{"peer"}, nil)
	}
	return &bgpCollector{s: s,
		up:          d("merlin_bgp_session_up", "1 while the BGP session with the peer is established."),
		transitions: d("merlin_bgp_session_transitions_total", "Times the established session with the peer went down."),
		updates:     d("merlin_bgp_updates_sent_total", "BGP UPDATE messages sent to the peer."),
		sent:        d("merlin_bgp_prefixes_sent", "Prefixes announced to the peer."),
		recv:        d("merlin_bgp_prefixes_received", "Prefixes the peer sent (never imported)."),
		shut:        d("merlin_bgp_peer_shut", "1 while the peer is shut down for sending more prefixes than its limit."),
		bfdUp:       d("merlin_bfd_session_up", "1 while the BFD session with the peer is up (only peers with BFD)."),
		bfdFlaps:    d("merlin_bfd_session_flaps_total", "Times the BFD session with the peer failed (left up for a reason other than merlin taking it down)."),
		bfdDetect:   d("merlin_bfd_detect_time_seconds", "Negotiated BFD detection time with the peer, while up: how long a silent router stays up."),
		routes:      prometheus.NewDesc("merlin_bgp_routes_announced", "VIP host routes the speaker announces.", nil, nil),
		refused: prometheus.NewDesc("merlin_bgp_refused_connections_total",
			"Connections to the BGP port from addresses that are no configured peer, closed at once.", nil, nil),
		restarts: prometheus.NewDesc("merlin_bgp_speaker_restarts_total",
			"Times the BGP speaker process ended without being asked to and was started again.", nil, nil),
	}
}

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.transitions, c.updates, c.sent, c.recv, c.shut, c.routes, c.refused, c.restarts, c.bfdUp, c.bfdFlaps, c.bfdDetect} {
		ch <- d
	}
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ch <- prometheus.MustNewConstMetric(c.routes, prometheus.GaugeValue, float64(len(c.s.Announced())))
	ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(c.s.RefusedConnections()))
	if r, ok := c.s.(interface{ Restarts() uint64 }); ok {
		ch <- prometheus.MustNewConstMetric(c.restarts, prometheus.CounterValue, float64(r.Restarts()))
	}
	peers, err := c.s.Peers(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.up, err)
		return
	}
	for _, p := range peers {
		a := p.Address.String()
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, b2f(p.Up), a)
		ch <- prometheus.MustNewConstMetric(c.transitions, prometheus.CounterValue, float64(p.Transitions), a)
		ch <- prometheus.MustNewConstMetric(c.updates, prometheus.CounterValue, float64(p.UpdatesSent), a)
		ch <- prometheus.MustNewConstMetric(c.sent, prometheus.GaugeValue, float64(p.PrefixesSent), a)
		ch <- prometheus.MustNewConstMetric(c.recv, prometheus.GaugeValue, float64(p.PrefixesReceived), a)
		ch <- prometheus.MustNewConstMetric(c.shut, prometheus.GaugeValue, b2f(p.Shut), a)
		if b := p.BFD; b != nil {
			ch <- prometheus.MustNewConstMetric(c.bfdUp, prometheus.GaugeValue, b2f(b.State == "up"), a)
			ch <- prometheus.MustNewConstMetric(c.bfdFlaps, prometheus.CounterValue, float64(b.Flaps), a)
			if b.DetectTime > 0 {
				ch <- prometheus.MustNewConstMetric(c.bfdDetect, prometheus.GaugeValue, b.DetectTime.Seconds(), a)
			}
		}
	}
}

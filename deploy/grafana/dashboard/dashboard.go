// Package dashboard builds merlin's Grafana dashboard with Grafana's own
// builder library (grafana-foundation-sdk): a panel, query or variable that
// does not fit Grafana's schema does not compile or fails Build.
// deploy/grafana/merlin.json is its output (make generate writes it; a
// test checks the committed file is). Needs nothing.
package dashboard

import (
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

type panelKind int

const (
	stat_ panelKind = iota
	timeSeries
	table_
)

// query is one PromQL target; $node, $service and $server are the
// dashboard's variables.
type query struct{ expr, legend string }

type panel struct {
	kind                     panelKind
	title, description, unit string
	w, h                     uint32
	queries                  []query
}

type row struct {
	title  string
	panels []panel
}

// JSON is the dashboard as Grafana imports it.
func JSON() ([]byte, error) {
	d, err := Build()
	if err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Build builds the dashboard. It is Grafana's classic dashboard model
// (schema v1), which every Grafana from 9 on imports; the SDK marks it
// deprecated in favour of the v2 schema, which only Grafana 12 reads.
//
//lint:ignore SA1019 the classic model is the one operators' Grafanas import
func Build() (dashboard.Dashboard, error) {
	//lint:ignore SA1019 see above
	b := dashboard.NewDashboardBuilder("merlin").Uid("merlin-lb").Editable().Tags([]string{"merlin", "ipvs", "load-balancer"}).
		Time("now-1h", "now").Refresh("30s").Timezone("").
		Description("merlin: per cluster, node, service and backend: traffic (IPVS and eBPF), health (active and passive), reconcile, etcd and BGP.").
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus"))
	for _, v := range variables {
		b = b.WithVariable(dashboard.NewQueryVariableBuilder(v.name).Label(v.label).Datasource(source).
			Query(dashboard.StringOrMap{Map: map[string]any{"query": v.query, "refId": v.name}}).Definition(v.query).
			IncludeAll(true).Multi(true).AllValue(".*").Refresh(dashboard.VariableRefreshOnTimeRangeChanged))
	}
	for _, r := range rows {
		b = b.WithRow(dashboard.NewRowBuilder(r.title))
		for _, p := range r.panels {
			pb, err := p.builder()
			if err != nil {
				//lint:ignore SA1019 see Build
				return dashboard.Dashboard{}, err
			}
			b = b.WithPanel(pb)
		}
	}
	return b.Build()
}

var source = common.DataSourceRef{Type: ptr("prometheus"), Uid: ptr("${datasource}")}

func ptr[T any](v T) *T { return &v }

// builder is the panel's typed builder, with its targets.
func (p panel) builder() (cog.Builder[dashboard.Panel], error) {
	targets := make([]cog.Builder[variants.Dataquery], 0, len(p.queries))
	for i, q := range p.queries {
		t := prometheus.NewDataqueryBuilder().Datasource(source).Expr(q.expr).RefId(string(rune('A' + i)))
		if q.legend != "" {
			t = t.LegendFormat(q.legend)
		}
		if p.kind == table_ {
			t = t.Instant().Format(prometheus.PromQueryFormatTable)
		}
		targets = append(targets, t)
	}
	switch p.kind {
	case stat_:
		return stat.NewPanelBuilder().Title(p.title).Description(p.description).Unit(p.unit).Span(p.w).Height(p.h).Datasource(source).Targets(targets).
			ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).Orientation(common.VizOrientationAuto), nil
	case timeSeries:
		return timeseries.NewPanelBuilder().Title(p.title).Description(p.description).Unit(p.unit).Span(p.w).Height(p.h).Datasource(source).Targets(targets), nil
	case table_:
		return table.NewPanelBuilder().Title(p.title).Description(p.description).Unit(p.unit).Span(p.w).Height(p.h).Datasource(source).Targets(targets), nil
	}
	return nil, fmt.Errorf("panel %q: unknown kind %d", p.title, p.kind)
}

var variables = []struct{ name, label, query string }{
	{"node", "Node", `label_values(merlin_build_info, instance)`},
	{"service", "Service", `label_values(merlin_ipvs_service_connections_total{instance=~"$node"}, service)`},
	{"server", "Backend", `label_values(merlin_ipvs_backend_weight{instance=~"$node",service=~"$service"}, server)`},
}

// rows are the dashboard's rows and panels, in order.
var rows = []row{
	{title: "Cluster", panels: []panel{
		{kind: stat_, title: "Nodes in step", description: "Nodes that applied the desired state they have seen.", unit: "short", w: 4, h: 4, queries: []query{{expr: "count(merlin_desired_revision{instance=~\"$node\"} - merlin_applied_revision{instance=~\"$node\"} == 0)", legend: "in step"}}},
		{kind: stat_, title: "etcd reachable", unit: "short", w: 4, h: 4, queries: []query{{expr: "min(merlin_etcd_connected{instance=~\"$node\"})", legend: "etcd"}}},
		{kind: stat_, title: "Services with every server down", unit: "short", w: 4, h: 4, queries: []query{{expr: "sum(merlin_service_all_servers_down{instance=~\"$node\"})", legend: "down"}}},
		{kind: stat_, title: "Object errors", unit: "short", w: 4, h: 4, queries: []query{{expr: "sum(merlin_object_errors{instance=~\"$node\"})", legend: "errors"}}},
		{kind: stat_, title: "Counters up", description: "0: the eBPF counters are off on some node; meradm status says why.", unit: "short", w: 4, h: 4, queries: []query{{expr: "min(merlin_counters_up{instance=~\"$node\"})", legend: "counters"}}},
		{kind: stat_, title: "merlin versions", unit: "short", w: 4, h: 4, queries: []query{{expr: "count by (version) (merlin_build_info{instance=~\"$node\"})", legend: "{{version}}"}}},
	}},
	{title: "Traffic per service", panels: []panel{
		{kind: timeSeries, title: "New connections / s", unit: "cps", w: 8, h: 8, queries: []query{{expr: "sum by (service) (rate(merlin_ipvs_service_connections_total{instance=~\"$node\",service=~\"$service\"}[$__rate_interval]))", legend: "{{service}}"}}},
		{kind: timeSeries, title: "Packets in / s (IPVS and XDP)", description: "XDP counts what arrives at the node before IPVS; the two agree unless IPVS drops.", unit: "pps", w: 8, h: 8, queries: []query{{expr: "sum by (service) (rate(merlin_ipvs_service_incoming_packets_total{instance=~\"$node\",service=~\"$service\"}[$__rate_interval]))", legend: "{{service}} ipvs"}, {expr: "sum by (service) (rate(merlin_xdp_packets_total{instance=~\"$node\",service=~\"$service\"}[$__rate_interval]))", legend: "{{service}} xdp"}}},
		{kind: timeSeries, title: "Bytes in and out / s", unit: "Bps", w: 8, h: 8, queries: []query{{expr: "sum by (service) (rate(merlin_ipvs_service_incoming_bytes_total{instance=~\"$node\",service=~\"$service\"}[$__rate_interval]))", legend: "{{service}} in"}, {expr: "sum by (service) (rate(merlin_ipvs_service_outgoing_bytes_total{instance=~\"$node\",service=~\"$service\"}[$__rate_interval]))", legend: "{{service}} out"}}},
		{kind: timeSeries, title: "Connection attempts (SYN) / s at XDP", unit: "cps", w: 8, h: 8, queries: []query{{expr: "sum by (service) (rate(merlin_xdp_syn_total{instance=~\"$node\",service=~\"$service\"}[$__rate_interval]))", legend: "{{service}}"}}},
		{kind: timeSeries, title: "Unmatched packets / s by VIP", description: "Packets to a VIP on a port or protocol no service has: scans and misconfigured clients.", unit: "pps", w: 8, h: 8, queries: []query{{expr: "sum by (vip) (rate(merlin_xdp_unmatched_packets_total{instance=~\"$node\"}[$__rate_interval]))", legend: "{{vip}}"}}},
		{kind: timeSeries, title: "Traffic per node", description: "How routers spread the traffic (ECMP) over the nodes.", unit: "pps", w: 8, h: 8, queries: []query{{expr: "sum by (instance) (rate(merlin_ipvs_service_incoming_packets_total{instance=~\"$node\",service=~\"$service\"}[$__rate_interval]))", legend: "{{instance}}"}}},
	}},
	{title: "Traffic per backend", panels: []panel{
		{kind: timeSeries, title: "Forwarded packets / s per backend", unit: "pps", w: 8, h: 8, queries: []query{{expr: "sum by (service, server) (rate(merlin_tc_forwarded_packets_total{instance=~\"$node\",service=~\"$service\",server=~\"$server\"}[$__rate_interval]))", legend: "{{service}} {{server}}"}}},
		{kind: timeSeries, title: "Active connections per backend", unit: "short", w: 8, h: 8, queries: []query{{expr: "sum by (service, server) (merlin_ipvs_backend_connections_active{instance=~\"$node\",service=~\"$service\",server=~\"$server\"})", legend: "{{service}} {{server}}"}}},
		{kind: timeSeries, title: "Weight per backend", description: "The kernel's weight: 0 while a health check (active or passive) says down.", unit: "short", w: 8, h: 8, queries: []query{{expr: "max by (service, server) (merlin_ipvs_backend_weight{instance=~\"$node\",service=~\"$service\",server=~\"$server\"})", legend: "{{service}} {{server}}"}}},
		{kind: table_, title: "Forwarded packets per backend (total)", unit: "short", w: 12, h: 8, queries: []query{{expr: "sum by (service, server) (merlin_tc_forwarded_packets_total{instance=~\"$node\",service=~\"$service\",server=~\"$server\"})"}}},
		{kind: timeSeries, title: "Connection attempts / s per backend", description: "SYNs forwarded to each backend (TC).", unit: "cps", w: 12, h: 8, queries: []query{{expr: "sum by (service, server) (rate(merlin_tc_forwarded_syn_total{instance=~\"$node\",service=~\"$service\",server=~\"$server\"}[$__rate_interval]))", legend: "{{service}} {{server}}"}}},
	}},
	{title: "Health", panels: []panel{
		{kind: timeSeries, title: "Server health (1 up)", unit: "short", w: 8, h: 8, queries: []query{{expr: "min by (service, server) (merlin_server_up{instance=~\"$node\",service=~\"$service\",server=~\"$server\"})", legend: "{{service}} {{server}}"}}},
		{kind: timeSeries, title: "Health transitions / s", unit: "short", w: 8, h: 8, queries: []query{{expr: "sum by (kind, to) (rate(merlin_health_transitions_total{instance=~\"$node\"}[$__rate_interval]))", legend: "{{kind}} {{to}}"}}},
		{kind: timeSeries, title: "Failed probes / s by reason", unit: "short", w: 8, h: 8, queries: []query{{expr: "sum by (reason) (rate(merlin_health_check_failures_total{instance=~\"$node\"}[$__rate_interval]))", legend: "{{reason}}"}}},
		{kind: timeSeries, title: "Passive: unanswered attempts in the window", description: "Services with passive health only.", unit: "short", w: 8, h: 8, queries: []query{{expr: "sum by (service, server) (merlin_passive_connection_attempts{instance=~\"$node\",service=~\"$service\",server=~\"$server\"} - merlin_passive_connections_answered{instance=~\"$node\",service=~\"$service\",server=~\"$server\"})", legend: "{{service}} {{server}}"}}},
		{kind: timeSeries, title: "Resets from backends / s", unit: "short", w: 8, h: 8, queries: []query{{expr: "sum by (service, server) (rate(merlin_tc_reply_rst_total{instance=~\"$node\",service=~\"$service\",server=~\"$server\"}[$__rate_interval]))", legend: "{{service}} {{server}}"}}},
		{kind: timeSeries, title: "Unanswered SYNs / s per backend", description: "NAT: connection attempts forwarded that got no SYN-ACK back.", unit: "short", w: 8, h: 8, queries: []query{{expr: "sum by (service, server) (rate(merlin_tc_forwarded_syn_total{instance=~\"$node\",service=~\"$service\",server=~\"$server\"}[$__rate_interval]) - rate(merlin_tc_reply_synack_total{instance=~\"$node\",service=~\"$service\",server=~\"$server\"}[$__rate_interval]))", legend: "{{service}} {{server}}"}}},
	}},
	{title: "Reconcile", panels: []panel{
		{kind: timeSeries, title: "Pass duration p99", unit: "s", w: 8, h: 8, queries: []query{{expr: "histogram_quantile(0.99, sum by (le, instance, kind) (rate(merlin_reconcile_duration_seconds_bucket{instance=~\"$node\"}[$__rate_interval])))", legend: "{{instance}} {{kind}}"}}},
		{kind: timeSeries, title: "Change applied p99 (watch event to kernel)", unit: "s", w: 8, h: 8, queries: []query{{expr: "histogram_quantile(0.99, sum by (le, instance) (rate(merlin_change_apply_seconds_bucket{instance=~\"$node\"}[$__rate_interval])))", legend: "{{instance}}"}}},
		{kind: timeSeries, title: "IPVS writes / s by op", unit: "short", w: 8, h: 8, queries: []query{{expr: "sum by (op) (rate(merlin_ipvs_ops_total{instance=~\"$node\"}[$__rate_interval]))", legend: "{{op}}"}, {expr: "sum by (op) (rate(merlin_ipvs_op_errors_total{instance=~\"$node\"}[$__rate_interval]))", legend: "{{op}} errors"}}},
		{kind: timeSeries, title: "Revisions: desired − applied", unit: "short", w: 8, h: 8, queries: []query{{expr: "merlin_desired_revision{instance=~\"$node\"} - merlin_applied_revision{instance=~\"$node\"}", legend: "{{instance}}"}}},
		{kind: timeSeries, title: "Failing sinks", unit: "short", w: 8, h: 8, queries: []query{{expr: "1 - merlin_sink_up{instance=~\"$node\"}", legend: "{{instance}} {{sink}}"}}},
		{kind: timeSeries, title: "Owned services", unit: "short", w: 8, h: 8, queries: []query{{expr: "merlin_owned_services{instance=~\"$node\"}", legend: "{{instance}}"}}},
	}},
	{title: "etcd", panels: []panel{
		{kind: timeSeries, title: "etcd reachable", unit: "short", w: 8, h: 8, queries: []query{{expr: "merlin_etcd_connected{instance=~\"$node\"}", legend: "{{instance}}"}}},
		{kind: timeSeries, title: "etcd database size", unit: "bytes", w: 8, h: 8, queries: []query{{expr: "max(merlin_etcd_db_bytes{instance=~\"$node\"})", legend: "db"}}},
		{kind: timeSeries, title: "Re-lists of the desired state / s", unit: "short", w: 8, h: 8, queries: []query{{expr: "sum by (reason) (rate(merlin_watch_relists_total{instance=~\"$node\"}[$__rate_interval]))", legend: "{{reason}}"}}},
	}},
	{title: "BGP", panels: []panel{
		{kind: timeSeries, title: "Sessions up", unit: "short", w: 8, h: 8, queries: []query{{expr: "merlin_bgp_session_up{instance=~\"$node\"}", legend: "{{instance}} {{peer}}"}}},
		{kind: timeSeries, title: "Routes announced", unit: "short", w: 8, h: 8, queries: []query{{expr: "merlin_bgp_routes_announced{instance=~\"$node\"}", legend: "{{instance}}"}}},
		{kind: timeSeries, title: "VIPs by announcement state", unit: "short", w: 8, h: 8, queries: []query{{expr: "sum by (state) (merlin_vip_announced{instance=~\"$node\"})", legend: "{{state}}"}}},
		{kind: timeSeries, title: "BFD sessions up", description: "1 while the BFD session with the router is up; 0 with BGP up means a dead node is noticed only after the hold time.", unit: "short", w: 8, h: 8, queries: []query{{expr: "merlin_bfd_session_up{instance=~\"$node\"}", legend: "{{instance}} → {{peer}}"}}},
		{kind: timeSeries, title: "BFD flaps / 10 min", description: "Times the BFD session left up: each one took the BGP session down.", unit: "short", w: 8, h: 8, queries: []query{{expr: "increase(merlin_bfd_session_flaps_total{instance=~\"$node\"}[10m])", legend: "{{instance}} → {{peer}}"}}},
		{kind: timeSeries, title: "BFD detection time", description: "How long a silent router stays up, as negotiated.", unit: "short", w: 8, h: 8, queries: []query{{expr: "merlin_bfd_detect_time_seconds{instance=~\"$node\"}", legend: "{{instance}} → {{peer}}"}}},
	}},
}

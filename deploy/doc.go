// Package deploy holds what ships for operators — the systemd unit, an
// example configuration, a Grafana dashboard (grafana/) and Prometheus
// alert rules and scrape configuration (prometheus/) — and gives tests the
// PromQL of the dashboard and the rules. No privileges needed.
package deploy

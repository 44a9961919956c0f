package deploy_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/deploy"
	"github.com/merlin-ipvs/merlin/deploy/grafana/dashboard"
	"github.com/merlin-ipvs/merlin/internal/testenv"
)

func promtool(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		testenv.Missing(t, testenv.PeersPromised(), "Debian's promtool (package prometheus) not installed")
	}
	cmd := exec.Command("promtool", args...)
	cmd.Dir = "prometheus"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The rules parse, each alert has a unit test, and the tests pass.
func TestAlertRules(t *testing.T) {
	promtool(t, "check", "rules", "merlin-rules.yml")
	promtool(t, "test", "rules", "merlin-rules.test.yml")
	promtool(t, "check", "config", "prometheus.yml")
	alerts, err := deploy.Alerts()
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("prometheus/merlin-rules.test.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		name := strings.TrimPrefix(a.Where, "alert: ")
		if !strings.Contains(string(tests), "alertname: "+name+",") && !strings.Contains(string(tests), "alertname: "+name+"\n") {
			t.Errorf("alert %s has no promtool unit test", name)
		}
	}
	if len(alerts) < 10 {
		t.Fatalf("only %d alerts", len(alerts))
	}
}

// Every dashboard query parses as PromQL: promtool checks them as
// recording rules.
func TestDashboardQueriesParse(t *testing.T) {
	qs, err := deploy.Dashboard()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, q := range qs {
		if len(deploy.MetricNames(q.Expr)) == 0 {
			t.Errorf("%s reads no merlin metric: %s", q.Where, q.Expr)
		}
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %q\n", i, q.Expr)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, "check", "rules", path)
	if len(qs) < 30 {
		t.Fatalf("only %d dashboard queries", len(qs))
	}
}

// The shipped unit scores 4.0 or better in systemd's own security
// analysis, and grants no capability beyond its bounding set.
func TestSystemdUnitHardening(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		testenv.Missing(t, testenv.PeersPromised(), "systemd-analyze (package systemd) not installed")
	}
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=40", "merlin.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	var score float64
	last := strings.TrimSpace(string(out))
	last = last[strings.LastIndex(last, "\n")+1:]
	if _, err := fmt.Sscanf(last[strings.Index(last, ": ")+2:], "%f", &score); err != nil || score > 4.0 {
		t.Fatalf("exposure %v (%v), want at most 4.0:\n%s", score, err, out)
	}
	t.Logf("systemd-analyze security: %s", last)
	unit, err := os.ReadFile("merlin.service")
	if err != nil {
		t.Fatal(err)
	}
	caps := map[string][]string{}
	for _, line := range strings.Split(string(unit), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasSuffix(k, "Capabilities") || strings.HasPrefix(line, "CapabilityBoundingSet=") {
			caps[k] = strings.Fields(v)
		}
	}
	for _, c := range caps["AmbientCapabilities"] {
		if !slices.Contains(caps["CapabilityBoundingSet"], c) {
			t.Errorf("ambient %s is not in the bounding set", c)
		}
	}
	if !strings.Contains(string(unit), "\nType=notify\n") || !strings.Contains(string(unit), "\nNoNewPrivileges=yes\n") {
		t.Error("the unit is not Type=notify with NoNewPrivileges")
	}
}

// TestDashboardIsGenerated: the shipped dashboard is what the typed code
// in deploy/grafana/dashboard builds (make generate writes it).
func TestDashboardIsGenerated(t *testing.T) {
	want, err := dashboard.JSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("grafana/merlin.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("deploy/grafana/merlin.json is not what deploy/grafana/dashboard builds: run make generate")
	}
}

// What ships reads only the per-backend families a node exports by
// default: an operator who changes nothing sees every panel and alert.
func TestShippedQueriesNeedOnlyDefaultFamilies(t *testing.T) {
	dash, err := deploy.Dashboard()
	if err != nil {
		t.Fatal(err)
	}
	alerts, err := deploy.Alerts()
	if err != nil {
		t.Fatal(err)
	}
	perBackend := node.BackendFamilyNames()
	for _, q := range append(dash, alerts...) {
		for _, name := range deploy.MetricNames(q.Expr) {
			if slices.Contains(perBackend, name) && !slices.Contains(node.DefaultBackendFamilies, name) {
				t.Errorf("%s reads %s, which -metrics-backend-families leaves out by default", q.Where, name)
			}
		}
	}
}

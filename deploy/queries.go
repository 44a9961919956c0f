package deploy

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

//go:embed grafana/merlin.json
var dashboardJSON []byte

//go:embed prometheus/merlin-rules.yml
var rulesYAML []byte

// Query is one PromQL expression that ships, with Grafana's variables
// replaced by values that select everything.
type Query struct {
	Where string // "dashboard: PANEL" or "alert: NAME"
	Expr  string
}

// Dashboard returns every query of the Grafana dashboard (panel targets and
// variable queries).
func Dashboard() ([]Query, error) {
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(dashboardJSON, &d); err != nil {
		return nil, fmt.Errorf("grafana/merlin.json: %w", err)
	}
	var out []Query
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			out = append(out, Query{Where: "dashboard: " + p.Title, Expr: expand(t.Expr)})
		}
	}
	for _, v := range d.Templating.List {
		q, ok := v.Query.(map[string]any)
		if !ok {
			continue
		}
		s, _ := q["query"].(string)
		if m := labelValues.FindStringSubmatch(s); m != nil {
			out = append(out, Query{Where: "dashboard variable: " + v.Name, Expr: expand(m[1])})
		}
	}
	return out, nil
}

var labelValues = regexp.MustCompile(`^label_values\((.*),\s*\w+\)$`)

// PanelQuery returns the first query of the dashboard panel with the title.
func PanelQuery(title string) (string, error) {
	qs, err := Dashboard()
	if err != nil {
		return "", err
	}
	for _, q := range qs {
		if q.Where == "dashboard: "+title {
			return q.Expr, nil
		}
	}
	return "", fmt.Errorf("no dashboard panel %q", title)
}

// expand replaces Grafana's variables: every node, service and server, and
// a one-minute rate window.
func expand(e string) string {
	return strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$node", ".*", "$service", ".*", "$server", ".*").Replace(e)
}

// Alerts returns the expression of every alert rule.
func Alerts() ([]Query, error) {
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
				Expr  string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(rulesYAML, &f); err != nil {
		return nil, fmt.Errorf("prometheus/merlin-rules.yml: %w", err)
	}
	var out []Query
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out = append(out, Query{Where: "alert: " + r.Alert, Expr: r.Expr})
		}
	}
	return out, nil
}

var metricName = regexp.MustCompile(`\bmerlin_[a-z0-9_]+`)

// MetricNames are the merlin metrics an expression reads, histogram series
// named by their family.
func MetricNames(expr string) []string {
	var out []string
	for _, n := range metricName.FindAllString(expr, -1) {
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if strings.HasSuffix(n, "_seconds"+suffix) {
				n = strings.TrimSuffix(n, suffix)
			}
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

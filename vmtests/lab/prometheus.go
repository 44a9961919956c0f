package lab

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PrometheusAddr is where the lab's Prometheus serves its HTTP API.
const PrometheusAddr = "127.0.0.1:9090"

// Prometheus is Debian's prometheus scraping every node each second.
type Prometheus struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// StartPrometheus starts Prometheus with the nodes as job "merlin" and
// the given rule files loaded.
func (l *Lab) StartPrometheus(ruleFiles ...string) (*Prometheus, error) {
	dir := filepath.Join(l.Root, "prometheus")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var targets []string
	for _, n := range l.Nodes {
		targets = append(targets, strconv.Quote(n.Addr+":4283"))
	}
	var rules []string
	for _, f := range ruleFiles {
		abs, err := filepath.Abs(f)
		if err != nil {
			return nil, err
		}
		rules = append(rules, strconv.Quote(abs))
	}
	conf := fmt.Sprintf("global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [%s]\nscrape_configs:\n  - job_name: merlin\n    scrape_timeout: 1s\n    static_configs: [{targets: [%s]}]\n",
		strings.Join(rules, ", "), strings.Join(targets, ", "))
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(l.Root, "prometheus.log"))
	if err != nil {
		return nil, err
	}
	p := &Prometheus{done: make(chan struct{})}
	p.cmd = exec.Command("prometheus", "--config.file="+path, "--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+PrometheusAddr)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	go func() { _ = p.cmd.Wait(); log.Close(); close(p.done) }()
	return p, nil
}

// Stop ends Prometheus.
func (p *Prometheus) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Query runs an instant query and returns the vector it gives, keyed by
// the series' labels as sorted name=value pairs joined by commas.
func (p *Prometheus) Query(expr string) (map[string]float64, error) {
	resp, err := http.Get("http://" + PrometheusAddr + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("query %s: %w", expr, err)
	}
	if r.Status != "success" || r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: %s %s (%s)", expr, r.Status, r.Error, r.Data.ResultType)
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		var labels []string
		for k, v := range s.Metric {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %q", expr, str)
		}
		out[strings.Join(labels, ",")] = v
	}
	return out, nil
}

// RulesHealthy reports rules Prometheus could not evaluate.
func (p *Prometheus) RulesHealthy() error {
	resp, err := http.Get("http://" + PrometheusAddr + "/api/v1/rules")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return err
	}
	n := 0
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			n++
			if rule.Health != "ok" {
				return fmt.Errorf("rule %s: health %q %s", rule.Name, rule.Health, rule.LastError)
			}
		}
	}
	if n == 0 {
		return fmt.Errorf("no rules loaded")
	}
	return nil
}

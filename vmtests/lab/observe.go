package lab

import (
	"bufio"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Traffic connects from the client through an address ten times a second
// until Finish, counting what worked and what failed.
type Traffic struct {
	stop, done chan struct{}
	ok, fail   atomic.Int64
	lastErr    atomic.Value
}

// StartTraffic starts connecting to addr; the loop is bounded in count.
func (l *Lab) StartTraffic(addr string) *Traffic {
	tr := &Traffic{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for range 1000000 { // bounded; stopped long before
			select {
			case <-tr.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			conn, _, err := l.Connect(addr)
			if err != nil {
				tr.fail.Add(1)
				tr.lastErr.Store(err.Error())
				continue
			}
			conn.Close()
			tr.ok.Add(1)
		}
	}()
	return tr
}

// Counts is how many connections worked and failed so far.
func (tr *Traffic) Counts() (ok, fail int64) { return tr.ok.Load(), tr.fail.Load() }

// Finish stops the connections and returns how many worked and failed,
// with the last error.
func (tr *Traffic) Finish() (ok, fail int64, lastErr any) {
	close(tr.stop)
	<-tr.done
	return tr.ok.Load(), tr.fail.Load(), tr.lastErr.Load()
}

// Metric sums every series of a metric on a node's /metrics.
func Metric(n *Node, name string) (float64, error) {
	resp, err := http.Get("http://" + n.Addr + ":4283/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s /metrics: %s", n.Name, resp.Status)
	}
	total := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += v
		}
	}
	return total, sc.Err()
}

// Series reads one metric's series from a node's /metrics, keyed by their
// labels as `name=value` pairs sorted and joined by commas (empty for a
// series without labels).
func Series(n *Node, name string) (map[string]float64, error) {
	resp, err := http.Get("http://" + n.Addr + ":4283/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s /metrics: %s", n.Name, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s /metrics: %w", n.Name, err)
	}
	out := map[string]float64{}
	f := families[name]
	if f == nil {
		return out, nil
	}
	for _, m := range f.Metric {
		var labels []string
		for _, l := range m.Label {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(labels)
		v := m.GetGauge().GetValue()
		if m.Counter != nil {
			v = m.GetCounter().GetValue()
		}
		out[strings.Join(labels, ",")] = v
	}
	return out, nil
}

// Families lists the metric families a node's /metrics exports.
func Families(n *Node) (map[string]bool, error) {
	resp, err := http.Get("http://" + n.Addr + ":4283/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s /metrics: %w", n.Name, err)
	}
	out := map[string]bool{}
	for name, f := range families {
		if len(f.Metric) > 0 {
			out[name] = true
		}
	}
	return out, nil
}

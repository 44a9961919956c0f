// Command scrapebench measures a scrape of merlin's /metrics with a large
// table loaded — the kernel's IPVS counters of every service and server
// and the eBPF counters of every key — against Prometheus' node_exporter
// IPVS collector (Debian's prometheus-node-exporter) reading the same
// kernel table in the same run, and reports merlin's resident memory with
// the counters on. It runs in the test VM (root, IPVS).
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/types"
)

const etcdURL = "http://127.0.0.1:2379"

func main() {
	services := flag.Int("services", 10000, "services")
	dests := flag.Int("dests", 10, "real servers per service")
	scrapes := flag.Int("scrapes", 5, "scrapes of each exporter (interleaved)")
	merlinBin := flag.String("merlin", "", "merlin binary (default: next to this one)")
	flag.BoolVar(&defaultOnly, "default-only", false, "measure the default flags only (the goals), not every per-backend family too")
	flag.BoolVar(&healthChecks, "health-checks", false, "give every real server a TCP health check (period 1h, so that probes stay few: memory, not probing, is measured)")
	flag.StringVar(&profileDir, "profile-dir", "", "save merlin's CPU profile of each configuration's scrapes and its heap profile after them here (merlin runs with -pprof)")
	flag.Parse()
	if *merlinBin == "" {
		self, _ := os.Executable()
		*merlinBin = filepath.Join(filepath.Dir(self), "merlin")
	}
	if err := run(*merlinBin, *services, *dests, *scrapes); err != nil {
		fmt.Fprintln(os.Stderr, "scrapebench:", err)
		os.Exit(1)
	}
}

func sh(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func start(root, name string, cmd *exec.Cmd) (func(), error) {
	log, err := os.Create(filepath.Join(root, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); log.Close() }, nil
}

func run(merlinBin string, services, dests, scrapes int) error {
	ctx := context.Background()
	for _, c := range [][]string{{"ip", "link", "set", "lo", "up"}, {"ip", "link", "add", "bench0", "type", "dummy"}, {"ip", "link", "set", "bench0", "up"}} {
		if err := sh(c[0], c[1:]...); err != nil {
			return err
		}
	}
	root, err := os.MkdirTemp("/var/tmp", "scrapebench-") // not /tmp: 9p, no mmap for bbolt
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	kv, stop, err := startEtcd(root)
	if err != nil {
		return err
	}
	defer stop()
	items := table(services, dests)
	if _, err := store.NewStore(kv, "/merlin").Import(ctx, items); err != nil {
		return err
	}
	// node_exporter takes minutes at this size: it is scraped after every
	// other merlin scrape, in the first configuration only.
	stopNE, err := start(root, "node_exporter", exec.Command("prometheus-node-exporter", "--collector.disable-defaults", "--collector.ipvs",
		"--web.listen-address=127.0.0.1:9100"))
	if err != nil {
		return err
	}
	defer stopNE()
	if err := waitFor(30*time.Second, func() error { return httpOK(neURL) }); err != nil {
		return err
	}
	b := &bench{root: root, merlinBin: merlinBin, st: store.NewStore(kv, "/merlin"), table: items, services: services, dests: dests, scrapes: scrapes}
	defer os.RemoveAll("/sys/fs/bpf/scrapebench")
	return b.runConfigs(ctx)
}

// runConfigs measures merlin with the default flags, then with every
// per-backend family, node_exporter in the first; the goals hold for the
// default flags.
func (b *bench) runConfigs(ctx context.Context) error {
	var ne *scrapeRun
	var failed []string
	for _, cfg := range []struct {
		name, families string
		goals          bool
	}{{"default", "default", true}, {"every per-backend family", "all", false}} {
		got, neGot, err := b.runConfig(ctx, cfg.families, ne == nil)
		if err != nil {
			return fmt.Errorf("%s: %w", cfg.name, err)
		}
		if ne == nil {
			ne = neGot
		}
		if missed := b.report(cfg.name, got, ne); cfg.goals {
			failed = append(failed, missed...)
		}
		if defaultOnly {
			break
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("GOAL MISSED: %s", strings.Join(failed, "; "))
	}
	return nil
}

// startEtcd starts Debian's etcd in root and connects to it.
func startEtcd(root string) (*clientv3.Client, func(), error) {
	stop, err := start(root, "etcd", exec.Command("etcd", "--name", "e", "--data-dir", filepath.Join(root, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL, "--listen-peer-urls", "http://127.0.0.1:2380",
		"--initial-advertise-peer-urls", "http://127.0.0.1:2380", "--initial-cluster", "e=http://127.0.0.1:2380",
		"--log-level", "error", "--quota-backend-bytes", strconv.Itoa(4<<30)))
	if err != nil {
		return nil, nil, err
	}
	if err := waitFor(60*time.Second, func() error { return httpOK(etcdURL + "/health") }); err != nil {
		stop()
		return nil, nil, err
	}
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		stop()
		return nil, nil, err
	}
	return kv, func() { kv.Close(); stop() }, nil
}

// profileDir: where to save merlin's profiles ("": none).
var (
	profileDir   string
	healthChecks bool
	defaultOnly  bool
)

const (
	merlinURL = "http://127.0.0.1:4283/metrics"
	neURL     = "http://127.0.0.1:9100/metrics"
	goal      = 10 * time.Second // Prometheus's default scrape_timeout
)

type bench struct {
	root, merlinBin          string
	st                       *store.Store
	table                    []*types.ListResponse_Item
	services, dests, scrapes int
}

// waitLoaded waits until merlin has the table in the kernel and the
// counters' keys, and exports a complete background read of both.
func (b *bench) waitLoaded(families string) error {
	keys := float64(b.services + 2*b.services*b.dests) // VIPs, servers forwarded to, NAT servers replying
	begin := time.Now()
	err := waitFor(15*time.Minute, func() error {
		m, err := scrapeValues(merlinURL, "merlin_counters_keys", "merlin_owned_services", "merlin_ipvs_stats_up", "merlin_counters_age_seconds")
		if err != nil {
			return err
		}
		if m["merlin_counters_keys"] != keys || m["merlin_owned_services"] != float64(b.services) || m["merlin_ipvs_stats_up"] != 1 {
			return fmt.Errorf("not loaded and read yet: %v", m)
		}
		if _, ok := m["merlin_counters_age_seconds"]; !ok {
			return fmt.Errorf("eBPF counters not read yet: %v", m)
		}
		return nil
	})
	if err == nil {
		fmt.Printf("\n[-metrics-backend-families %s] %d services × %d NAT servers in the kernel, %.0f counter keys and a complete background read %.1fs after merlin started\n",
			families, b.services, b.dests, keys, time.Since(begin).Seconds())
	}
	return err
}

// scrapeRun is one exporter's scrapes of a run.
type scrapeRun struct {
	times        []time.Duration
	bytes, lines int
	rss          float64 // merlin's resident memory after them (MiB)
	parts        map[string]float64
	changes      int     // weight changes written while merlin was scraped
	applied      float64 // revisions merlin applied meanwhile
}

func (s *scrapeRun) median() time.Duration {
	t := slices.Clone(s.times)
	slices.Sort(t)
	return t[len(t)/2]
}

// runConfig starts merlin with the default flags but for the per-backend
// families, waits for its first complete background read, and scrapes it
// (and, if asked, node_exporter, interleaved) while weights change.
func (b *bench) runConfig(ctx context.Context, families string, withNE bool) (*scrapeRun, *scrapeRun, error) {
	stop, err := start(b.root, "merlin-"+families, exec.Command(b.merlinBin, "-node", "bench", "-store-endpoints", etcdURL, "-data-dir", filepath.Join(b.root, "merlin"),
		"-counters-xdp-interfaces", "bench0", "-counters-tc-interfaces", "bench0", "-counters-xdp-mode", "generic", "-counters-pin-dir", "/sys/fs/bpf/scrapebench",
		"-metrics-backend-families", families, fmt.Sprintf("-pprof=%v", profileDir != "")))
	if err != nil {
		return nil, nil, err
	}
	defer stop()
	if err := b.waitLoaded(families); err != nil {
		return nil, nil, err
	}
	stopChanges := b.changeWeights(ctx)
	before, err := scrapeValues(merlinURL, "merlin_applied_revision")
	if err != nil {
		return nil, nil, err
	}
	m, ne := &scrapeRun{}, &scrapeRun{}
	cpuDone := profile(fmt.Sprintf("profile?seconds=%d", 10*b.scrapes), "cpu-"+families+".prof")
	for i := range b.scrapes {
		if err := m.scrape(merlinURL); err != nil {
			return nil, nil, fmt.Errorf("merlin: %w", err)
		}
		fmt.Printf("  merlin scrape %d: %.2fs, %d series\n", i+1, m.times[i].Seconds(), m.lines)
		if withNE && i%2 == 0 {
			if err := ne.scrape(neURL); err != nil {
				return nil, nil, fmt.Errorf("node_exporter: %w", err)
			}
		}
	}
	m.changes = stopChanges()
	<-cpuDone
	<-profile("heap?gc=1", "heap-"+families+".prof")
	after, err := scrapeValues(merlinURL, "merlin_applied_revision", "merlin_ipvs_stats_read_seconds", "merlin_counters_read_seconds",
		"merlin_ipvs_stats_age_seconds", "merlin_counters_age_seconds")
	if err != nil {
		return nil, nil, err
	}
	m.parts, m.applied = after, after["merlin_applied_revision"]-before["merlin_applied_revision"]
	if m.rss, err = rssMiB("merlin"); err != nil {
		return nil, nil, err
	}
	if !withNE {
		ne = nil
	}
	return m, ne, nil
}

// profile saves one of merlin's pprof profiles in profileDir, in the
// background; the channel closes when it is saved (or failed, said).
func profile(what, file string) <-chan struct{} {
	done := make(chan struct{})
	if profileDir == "" {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		resp, err := http.Get("http://127.0.0.1:4283/debug/pprof/" + what)
		if err == nil {
			defer resp.Body.Close()
			var f *os.File
			if f, err = os.Create(filepath.Join(profileDir, file)); err == nil {
				_, err = io.Copy(f, resp.Body)
				f.Close()
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "scrapebench: profile:", err)
		}
	}()
	return done
}

func (s *scrapeRun) scrape(url string) error {
	t, b, l, err := scrape(url)
	if err != nil {
		return err
	}
	s.times, s.bytes, s.lines = append(s.times, t), b, l
	return nil
}

// changeWeights sets a random server's weight every 200 ms until stopped:
// the node keeps reconciling while it is scraped. stop returns the count.
func (b *bench) changeWeights(ctx context.Context) func() int {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan int)
	go func() {
		n := 0
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				done <- n
				return
			case <-tick.C:
			}
			item := b.table[rand.IntN(len(b.table))]
			srv := item.Servers[rand.IntN(len(item.Servers))]
			if _, err := b.st.UpdateServer(ctx, &types.RealServer{ServiceID: item.Service.Id, Key: srv.Key,
				Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(uint32(1 + rand.IntN(100))), Forward: types.ForwardMethod_MASQ}}); err == nil {
				n++
			}
		}
	}()
	return func() int { cancel(); return <-done }
}

// report prints one configuration's figures and returns the goals missed.
func (b *bench) report(name string, m, ne *scrapeRun) []string {
	var failed []string
	worst := slices.Max(m.times)
	fmt.Printf("\n%s: merlin scrape median %.2fs, worst %.2fs of %d (goal: every one ≤ %s); %d series, %d bytes\n",
		name, m.median().Seconds(), worst.Seconds(), len(m.times), goal, m.lines, m.bytes)
	if worst > goal {
		failed = append(failed, fmt.Sprintf("%s: a scrape took %.2fs (> %s)", name, worst.Seconds(), goal))
	}
	fmt.Printf("  background reads: kernel IPVS %.2fs, eBPF maps %.2fs; exported ages %.1fs and %.1fs\n",
		m.parts["merlin_ipvs_stats_read_seconds"], m.parts["merlin_counters_read_seconds"], m.parts["merlin_ipvs_stats_age_seconds"], m.parts["merlin_counters_age_seconds"])
	fmt.Printf("  while scraped: %d weight changes written, merlin applied %.0f revisions; resident memory %.0f MiB\n", m.changes, m.applied, m.rss)
	perSeries := m.median().Seconds() / float64(m.lines)
	nePerSeries := ne.median().Seconds() / float64(ne.lines)
	fmt.Printf("  node_exporter (ipvs): median %.2fs for %d series; per series merlin %.1f µs, node_exporter %.1f µs: ratio %.3f (goal ≤ 0.25)\n",
		ne.median().Seconds(), ne.lines, perSeries*1e6, nePerSeries*1e6, perSeries/nePerSeries)
	if perSeries/nePerSeries > 0.25 {
		failed = append(failed, fmt.Sprintf("%s: per-series cost %.3f × node_exporter's (> 0.25)", name, perSeries/nePerSeries))
	}
	return failed
}

// table is services × dests NAT servers, VIPs spread over the low octets.
func table(services, dests int) []*types.ListResponse_Item {
	items := make([]*types.ListResponse_Item, services)
	for i := range services {
		vip := netip.AddrFrom4([4]byte{198, 18, byte(i / 256 % 256), byte(i % 256)})
		item := &types.ListResponse_Item{Service: &types.VirtualService{
			Id: fmt.Sprintf("svc%05d", i), Key: &types.VirtualService_Key{Ip: vip.String(), Port: 80, Protocol: types.Protocol_TCP},
			Config: &types.VirtualService_Config{Scheduler: "wlc"},
		}}
		for j := range dests {
			item.Servers = append(item.Servers, &types.RealServer{
				Key:    &types.RealServer_Key{Ip: netip.AddrFrom4([4]byte{198, 19, byte(j), byte(i % 250)}).String(), Port: uint32(8000 + i/250)},
				Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(1), Forward: types.ForwardMethod_MASQ},
			})
			if healthChecks {
				item.Servers[j].HealthCheck = &types.RealServer_HealthCheck{Endpoint: wrapperspb.String(fmt.Sprintf("tcp://:%d", 8000+i/250)),
					Period: durationpb.New(time.Hour), Timeout: durationpb.New(time.Second), UpThreshold: 1, DownThreshold: 3}
			}
		}
		items[i] = item
	}
	return items
}

// scrape reads one exposition through a fixed buffer, counting bytes and
// series as it goes: the client's own cost stays small and the same for
// both exporters (Prometheus parses on another machine).
func scrape(url string) (time.Duration, int, int, error) {
	start := time.Now()
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	var c seriesCounter
	if _, err := io.CopyBuffer(&c, resp.Body, make([]byte, 256<<10)); err != nil {
		return 0, 0, 0, err
	}
	return time.Since(start), c.bytes, c.series, nil
}

// seriesCounter counts the lines that are not comments.
type seriesCounter struct {
	bytes, series int
	lineStart     bool // the next byte begins a line
	started       bool
}

func (c *seriesCounter) Write(p []byte) (int, error) {
	n := len(p)
	if !c.started {
		c.started, c.lineStart = true, true
	}
	for len(p) > 0 {
		if c.lineStart {
			if p[0] != '#' && p[0] != '\n' {
				c.series++
			}
			c.lineStart = false
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.bytes += len(p)
			break
		}
		c.bytes += i + 1
		p = p[i+1:]
		c.lineStart = true
	}
	return n, nil
}

func scrapeValues(url string, names ...string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && slices.Contains(names, f[0]) {
			out[f[0]], _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return out, sc.Err()
}

func httpOK(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

func waitFor(timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// rssMiB is the resident memory of the first process with the name.
func rssMiB(name string) (float64, error) {
	out, err := exec.Command("pgrep", "-x", name).Output()
	if err != nil {
		return 0, fmt.Errorf("pgrep %s: %w", name, err)
	}
	pid := strings.Fields(string(out))[0]
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for %s", name)
}

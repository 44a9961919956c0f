// Command scrapebench measures a scrape of merlin's /metrics with a large
// table loaded — the kernel's IPVS counters of every service and server
// and the eBPF counters of every key — against Prometheus' node_exporter
// IPVS collector (Debian's prometheus-node-exporter) reading the same
// kernel table in the same run, and reports merlin's resident memory with
// the counters on. It runs in the test VM (root, IPVS).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
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
	stop, err := start(root, "etcd", exec.Command("etcd", "--name", "e", "--data-dir", filepath.Join(root, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL, "--listen-peer-urls", "http://127.0.0.1:2380",
		"--initial-advertise-peer-urls", "http://127.0.0.1:2380", "--initial-cluster", "e=http://127.0.0.1:2380",
		"--log-level", "error", "--quota-backend-bytes", strconv.Itoa(4<<30)))
	if err != nil {
		return err
	}
	defer stop()
	if err := waitFor(60*time.Second, func() error { return httpOK(etcdURL + "/health") }); err != nil {
		return err
	}
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer kv.Close()
	if _, err := store.NewStore(kv, "/merlin").Import(ctx, table(services, dests)); err != nil {
		return err
	}
	stopMerlin, err := start(root, "merlin", exec.Command(merlinBin, "-node", "bench", "-store-endpoints", etcdURL, "-data-dir", filepath.Join(root, "merlin"),
		"-counters-xdp-interfaces", "bench0", "-counters-tc-interfaces", "bench0", "-counters-xdp-mode", "generic", "-counters-pin-dir", "/sys/fs/bpf/scrapebench",
		"-metrics-read-timeout", "5m")) // the whole table, however slow the VM
	if err != nil {
		return err
	}
	defer stopMerlin()
	defer os.RemoveAll("/sys/fs/bpf/scrapebench")
	stopNE, err := start(root, "node_exporter", exec.Command("prometheus-node-exporter", "--collector.disable-defaults", "--collector.ipvs",
		"--web.listen-address=127.0.0.1:9100"))
	if err != nil {
		return err
	}
	defer stopNE()
	keys := float64(services + 2*services*dests) // VIPs, servers forwarded to, NAT servers replying
	begin := time.Now()
	if err := waitFor(10*time.Minute, func() error {
		m, err := scrapeValues("http://127.0.0.1:4283/metrics", "merlin_counters_keys", "merlin_owned_services")
		if err != nil {
			return err
		}
		if m["merlin_counters_keys"] != keys || m["merlin_owned_services"] != float64(services) {
			return fmt.Errorf("not loaded yet: %v", m)
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Printf("%d services × %d NAT servers in the kernel and %.0f counter keys %.1fs after merlin started\n", services, dests, keys, time.Since(begin).Seconds())
	if err := waitFor(30*time.Second, func() error { return httpOK("http://127.0.0.1:9100/metrics") }); err != nil {
		return err
	}
	type result struct {
		times        []time.Duration
		bytes, lines int
	}
	results := map[string]*result{"merlin": {}, "node_exporter ipvs": {}}
	urls := map[string]string{"merlin": "http://127.0.0.1:4283/metrics", "node_exporter ipvs": "http://127.0.0.1:9100/metrics"}
	order := []string{"merlin", "node_exporter ipvs"}
	for i := range scrapes {
		for j := range order {
			name := order[(i+j)%2]
			t, b, l, err := scrape(urls[name])
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			r := results[name]
			r.times, r.bytes, r.lines = append(r.times, t), b, l
		}
	}
	fmt.Printf("\n| exporter | median scrape | min–max | series | bytes |\n|---|---:|---:|---:|---:|\n")
	for _, name := range order {
		r := results[name]
		s := slices.Clone(r.times)
		slices.Sort(s)
		fmt.Printf("| %s | %.2fs | %.2fs – %.2fs | %d | %d |\n", name, s[len(s)/2].Seconds(), s[0].Seconds(), s[len(s)-1].Seconds(), r.lines, r.bytes)
	}
	med := func(n string) float64 {
		s := slices.Clone(results[n].times)
		slices.Sort(s)
		return s[len(s)/2].Seconds()
	}
	fmt.Printf("\nmerlin scrape / node_exporter's: %.2f (merlin exports %.1f× the series: eBPF counters and service IDs besides the kernel's)\n",
		med("merlin")/med("node_exporter ipvs"), float64(results["merlin"].lines)/float64(results["node_exporter ipvs"].lines))
	fmt.Printf("merlin scrape median %.2fs (goal ≤ 1 s)\n", med("merlin"))
	parts, err := scrapeValues(urls["merlin"], "merlin_ipvs_stats_read_seconds", "merlin_counters_read_seconds")
	if err != nil {
		return err
	}
	up, err := scrapeValues(urls["merlin"], "merlin_ipvs_stats_up")
	if err != nil {
		return err
	}
	fmt.Printf("of one scrape: kernel IPVS read %.2fs (complete: %v), eBPF counters read %.2fs\n", parts["merlin_ipvs_stats_read_seconds"], up["merlin_ipvs_stats_up"] == 1, parts["merlin_counters_read_seconds"])
	rss, err := rssMiB("merlin")
	if err != nil {
		return err
	}
	fmt.Printf("merlin resident memory with counters on: %.0f MiB\n", rss)
	return nil
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
		}
		items[i] = item
	}
	return items
}

func scrape(url string) (time.Duration, int, int, error) {
	start := time.Now()
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, 0, err
	}
	took := time.Since(start)
	lines := 0
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			lines++
		}
	}
	return took, len(b), lines, nil
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

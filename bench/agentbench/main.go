// Command agentbench measures how long a weight change takes from the API
// call to the kernel: a real merlin node (the bin/merlin binary) watching
// Debian's etcd and programming the kernel's IPVS, at 100 services and at
// 10,000 services × 10 real servers. The floor, measured in the same run and
// interleaved change by change, is a bare etcd watcher that runs one
// `ipvsadm -e` per change. It also reports merlin's resident memory with the
// large table loaded. It needs root, a kernel with IPVS, etcd and ipvsadm:
// run it in the test VM with `make bench`.
package main

import (
	"bufio"
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
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/types"
)

var profilePath string

const (
	etcdURL   = "http://127.0.0.1:2379"
	floorVIP  = "198.19.255.1:80"
	floorReal = "198.18.255.2:80"
)

func main() {
	merlin := flag.String("merlin", "", "merlin binary (default: beside this program)")
	small := flag.Int("small", 100, "services in the small table")
	large := flag.Int("large", 10000, "services in the large table")
	dests := flag.Int("dests", 10, "real servers per service")
	changes := flag.Int("changes", 200, "weight changes measured per contender and size")
	flag.StringVar(&profilePath, "cpuprofile", "", "save a 30 s CPU profile of merlin during the large-table changes here")
	flag.Parse()
	if *merlin == "" {
		exe, _ := os.Executable()
		*merlin = filepath.Join(filepath.Dir(exe), "merlin")
	}
	if err := run(*merlin, *small, *large, *dests, *changes); err != nil {
		fmt.Fprintln(os.Stderr, "agentbench:", err)
		os.Exit(1)
	}
}

func sh(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func run(merlinBin string, small, large, dests, changes int) (err error) {
	ctx := context.Background()
	if err := sh("ip", "link", "set", "lo", "up"); err != nil {
		return err
	}
	// Not /tmp: the VM shares the host's /tmp over 9p, where bbolt cannot mmap.
	root, err := os.MkdirTemp("/var/tmp", "agentbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	etcd := exec.Command("etcd", "--name", "e", "--data-dir", filepath.Join(root, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e=http://127.0.0.1:2380", "--log-level", "error", "--logger", "zap",
		"--quota-backend-bytes", strconv.Itoa(4<<30))
	if err := etcd.Start(); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer func() { _ = etcd.Process.Kill(); _ = etcd.Wait() }()
	if err := waitHTTP(etcdURL+"/health", 60*time.Second); err != nil {
		return err
	}
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer kv.Close()
	store := store.NewStore(kv, "/merlin")
	table := buildTable(large, dests)
	if _, err := store.Import(ctx, table[:small]); err != nil {
		return err
	}

	nl, err := ipvs.Open(ipvs.Options{})
	if err != nil {
		return err
	}
	defer nl.Close()
	// The floor's own service: merlin does not own it and leaves it alone.
	if err := sh("ipvsadm", "-A", "-t", floorVIP, "-s", "rr"); err != nil {
		return err
	}
	if err := sh("ipvsadm", "-a", "-t", floorVIP, "-r", floorReal, "-m", "-w", "1"); err != nil {
		return err
	}
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	go floorWatcher(fctx, kv)

	merlin := exec.Command(merlinBin, "-node", "bench", "-store-endpoints", etcdURL, "-data-dir", filepath.Join(root, "merlin"),
		"-reconcile-sync-period", "30s", "-pprof")
	mlog, err := os.Create(filepath.Join(root, "merlin.log"))
	if err != nil {
		return err
	}
	merlin.Stdout, merlin.Stderr = mlog, mlog
	if err := merlin.Start(); err != nil {
		return err
	}
	defer func() { _ = merlin.Process.Kill(); _ = merlin.Wait() }()
	defer func() {
		if err != nil {
			b, _ := os.ReadFile(filepath.Join(root, "merlin.log"))
			lines := strings.Split(string(b), "\n")
			fmt.Fprintf(os.Stderr, "merlin log (tail):\n%s\n", strings.Join(lines[max(0, len(lines)-40):], "\n"))
			if resp, herr := http.Get("http://127.0.0.1:4283/metrics"); herr == nil {
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					if strings.HasPrefix(sc.Text(), "merlin_") {
						fmt.Fprintln(os.Stderr, sc.Text())
					}
				}
				resp.Body.Close()
			}
			if resp, herr := http.Get("http://127.0.0.1:4283/debug/pprof/goroutine?debug=2"); herr == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				fmt.Fprintf(os.Stderr, "merlin goroutines:\n%s\n", b)
			}
		}
	}()
	if err := waitHTTP("http://127.0.0.1:4283/readyz", 120*time.Second); err != nil {
		return err
	}
	conn, err := grpc.NewClient("127.0.0.1:4282", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	api := types.NewMerlinClient(conn)

	start := time.Now()
	if err := waitConverged(ctx, nl, small*dests); err != nil {
		return err
	}
	fmt.Printf("small table: %d services x %d real servers in the kernel %.2fs after merlin started\n", small, dests, time.Since(start).Seconds())
	smallMerlin, smallFloor, smallEtcd, err := measure(ctx, api, kv, nl, table[:small], changes)
	if err != nil {
		return err
	}

	start = time.Now()
	if _, err := store.Import(ctx, table[small:]); err != nil {
		return err
	}
	imported := time.Since(start)
	if err := waitConverged(ctx, nl, large*dests); err != nil {
		return err
	}
	fmt.Printf("large table: %d more services written to etcd in %.2fs; all %d x %d in the kernel %.2fs after the import began\n",
		large-small, imported.Seconds(), large, dests, time.Since(start).Seconds())
	time.Sleep(2 * time.Second)
	rss := rssMiB(merlin.Process.Pid)
	if profilePath != "" {
		go saveProfile(profilePath)
	}
	largeMerlin, largeFloor, largeEtcd, err := measure(ctx, api, kv, nl, table, changes)
	if err != nil {
		return err
	}

	fmt.Printf("\nAPI call → weight in the kernel, %d changes each (interleaved merlin/floor):\n\n", changes)
	fmt.Printf("| table | contender | p50 | p99 | merlin/floor p99 |\n|---|---|---:|---:|---:|\n")
	row := func(size string, m merlinTimes, f, e []time.Duration) {
		fmt.Printf("| %s | merlin (API → etcd → watch → runner → netlink) | %s | %s | **%.2f** |\n", size, ms(pct(m.total, 50)), ms(pct(m.total, 99)), float64(pct(m.total, 99))/float64(pct(f, 99)))
		fmt.Printf("| %s | merlin's own share (watch event received → kernel write acknowledged; %d of %d changes) | %s | %s | |\n", size, len(m.own), len(m.total), ms(pct(m.own, 50)), ms(pct(m.own, 99)))
		fmt.Printf("| %s | floor (etcd put → bare watcher → ipvsadm -e) | %s | %s | |\n", size, ms(pct(f, 50)), ms(pct(f, 99)))
		fmt.Printf("| %s | etcd alone (put → a watcher hears it) | %s | %s | |\n", size, ms(pct(e, 50)), ms(pct(e, 99)))
	}
	row(fmt.Sprintf("%d × %d", small, dests), smallMerlin, smallFloor, smallEtcd)
	row(fmt.Sprintf("%d × %d", large, dests), largeMerlin, largeFloor, largeEtcd)
	fmt.Printf("\nmerlin p99 at %d services / at %d services: **%.2f** (goal ≤ 1.5)\n", large, small, float64(pct(largeMerlin.total, 99))/float64(pct(smallMerlin.total, 99)))
	fmt.Printf("merlin's own share p99 at %d services / at %d services: **%.2f** (goal ≤ 1.5)\n", large, small, float64(pct(largeMerlin.own, 99))/float64(pct(smallMerlin.own, 99)))
	fmt.Printf("merlin p99 / floor p99: %.2f at %d, %.2f at %d (goal ≤ 2)\n",
		float64(pct(smallMerlin.total, 99))/float64(pct(smallFloor, 99)), small, float64(pct(largeMerlin.total, 99))/float64(pct(largeFloor, 99)), large)
	fmt.Printf("merlin resident memory with %d × %d loaded: %.0f MiB\n", large, dests, rss)
	return nil
}

func buildTable(services, dests int) []*types.ListResponse_Item {
	items := make([]*types.ListResponse_Item, services)
	for i := range services {
		// Distinct last octets first: the kernel hashes services on them.
		vip := netip.AddrFrom4([4]byte{198, 18, byte(i / 256 % 256), byte(i % 256)})
		item := &types.ListResponse_Item{Service: &types.VirtualService{
			Id:     fmt.Sprintf("svc%05d", i),
			Key:    &types.VirtualService_Key{Ip: vip.String(), Port: uint32(80 + i/65536), Protocol: types.Protocol_TCP},
			Config: &types.VirtualService_Config{Scheduler: "wlc"},
		}}
		for j := range dests {
			item.Servers = append(item.Servers, &types.RealServer{
				Key:    &types.RealServer_Key{Ip: netip.AddrFrom4([4]byte{198, 19, byte(j), byte(i % 250)}).String(), Port: uint32(8000 + i/250)},
				Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(1), Forward: types.ForwardMethod_ROUTE},
			})
		}
		items[i] = item
	}
	return items
}

// floorWatcher is the floor: a bare etcd watcher running ipvsadm -e per change.
func floorWatcher(ctx context.Context, kv *clientv3.Client) {
	for resp := range kv.Watch(ctx, "/floor/weight") {
		for _, ev := range resp.Events {
			_ = exec.Command("ipvsadm", "-e", "-t", floorVIP, "-r", floorReal, "-m", "-w", string(ev.Kv.Value)).Run()
		}
	}
}

// merlinTimes are one size's merlin figures: the whole change (API call
// to the weight in the kernel) and merlin's own share of it.
type merlinTimes struct {
	total, own []time.Duration
	skipped    int // changes whose share could not be told apart
}

// changeApply reads merlin's merlin_change_apply_seconds sum and count.
func changeApply() (sum, count float64, err error) {
	resp, err := http.Get("http://127.0.0.1:4283/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "merlin_change_apply_seconds_sum "); ok {
			sum, _ = strconv.ParseFloat(v, 64)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "merlin_change_apply_seconds_count "); ok {
			count, _ = strconv.ParseFloat(v, 64)
		}
	}
	return sum, count, sc.Err()
}

func measure(ctx context.Context, api types.MerlinClient, kv *clientv3.Client, nl *ipvs.Client, table []*types.ListResponse_Item, changes int) (m merlinTimes, floor, etcdOnly []time.Duration, err error) {
	// etcd alone: a put until a watcher of that key hears it.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	heard := kv.Watch(wctx, "/floor/etcd-only")
	rng := rand.New(rand.NewPCG(1, uint64(len(table))))
	floorKey := ipvs.ServiceKey{Protocol: ipvs.TCP, Address: netip.MustParseAddr("198.19.255.1"), Port: 80}
	for i := range changes {
		item := table[rng.IntN(len(table))]
		srv := item.Servers[rng.IntN(len(item.Servers))]
		w := uint32(2 + i%50)
		key := node.ServiceKeyOf(&types.VirtualService{Key: &types.VirtualService_Key{Ip: item.Service.Key.Ip, Port: item.Service.Key.Port, Protocol: types.Protocol_TCP, Family: types.AddressFamily_IPV4}})
		sum0, count0, err := changeApply()
		if err != nil {
			return m, nil, nil, err
		}
		t0 := time.Now()
		if _, err := api.UpdateServer(ctx, &types.RealServer{ServiceID: item.Service.Id, Key: srv.Key, Config: &types.RealServer_Config{Weight: wrapperspb.UInt32(w)}}); err != nil {
			return m, nil, nil, err
		}
		if err := waitWeight(ctx, nl, key, srv.Key.Ip, w); err != nil {
			return m, nil, nil, err
		}
		m.total = append(m.total, time.Since(t0))
		// merlin's own share: its merlin_change_apply_seconds observation
		// of this change (exactly one, since changes go one at a time).
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			sum, count, err := changeApply()
			if err != nil {
				return m, nil, nil, err
			}
			if count == count0+1 {
				m.own = append(m.own, time.Duration((sum-sum0)*float64(time.Second)))
				break
			}
			if count > count0+1 || time.Now().After(deadline) {
				m.skipped++ // another pass observed too (e.g. a re-list): no exact share
				break
			}
		}

		t0 = time.Now()
		if _, err := kv.Put(ctx, "/floor/etcd-only", strconv.Itoa(i)); err != nil {
			return m, nil, nil, err
		}
		if resp := <-heard; resp.Err() != nil || len(resp.Events) == 0 {
			return m, nil, nil, fmt.Errorf("etcd-only watch: %v", resp.Err())
		}
		etcdOnly = append(etcdOnly, time.Since(t0))

		t0 = time.Now()
		if _, err := kv.Put(ctx, "/floor/weight", strconv.Itoa(int(w))); err != nil {
			return m, nil, nil, err
		}
		if err := waitWeight(ctx, nl, floorKey, "198.18.255.2", w); err != nil {
			return m, nil, nil, err
		}
		floor = append(floor, time.Since(t0))
	}
	return m, floor, etcdOnly, nil
}

// waitWeight polls one service's destinations until ip has weight w.
func waitWeight(ctx context.Context, nl *ipvs.Client, key ipvs.ServiceKey, ip string, w uint32) error {
	addr := netip.MustParseAddr(ip)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		dests, err := nl.Destinations(ctx, key)
		if err != nil {
			return err
		}
		for _, d := range dests {
			if d.Key.Address == addr && d.Config.Weight == w {
				return nil
			}
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("weight %d of %s in %s not in the kernel after 60s", w, ip, key)
}

func waitConverged(ctx context.Context, nl *ipvs.Client, wantDests int) error {
	deadline := time.Now().Add(15 * time.Minute)
	for time.Now().Before(deadline) {
		t, err := nl.Table(ctx)
		if err != nil {
			return err
		}
		n := 0
		for _, vs := range t {
			if vs.Service.Key.Port >= 80 && vs.Service.Key.Address.As4()[1] == 18 && vs.Service.Key.Address.As4()[2] != 255 {
				n += len(vs.Destinations)
			}
		}
		if n >= wantDests {
			return nil
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("merlin did not program %d destinations in 15 minutes", wantDests)
}

// saveProfile fetches merlin's CPU profile over 30 s.
func saveProfile(path string) {
	resp, err := http.Get("http://127.0.0.1:4283/debug/pprof/profile?seconds=30")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpu profile:", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	_ = os.WriteFile(path, b, 0o644)
}

func waitHTTP(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s", url, timeout)
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func rssMiB(pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

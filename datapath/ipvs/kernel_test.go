package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// Tests named TestKernel* need IPVS: they run in the VM (make vmtest) and
// skip on kernels without it.

func newKernelClient(t *testing.T) (*Client, *testenv.NetNS) {
	t.Helper()
	ns := testenv.NewNetNS(t)
	c, err := Open(Options{NetNS: ns.FD})
	if errors.Is(err, ErrNoIPVS) {
		testenv.Missing(t, testenv.InVM(), "%v", err)
	}
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ns
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func apply(t *testing.T, c *Client, ops []Op) {
	t.Helper()
	if err := c.Apply(ctxT(t), ops); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func readTable(t *testing.T, c *Client) []VirtualServer {
	t.Helper()
	tab, err := c.Table(ctxT(t))
	if err != nil {
		t.Fatalf("table: %v", err)
	}
	return tab
}

func requireEqualTables(t *testing.T, what string, got, want []VirtualServer) {
	t.Helper()
	g, w := normalTable(got), normalTable(want)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("%s differs:\n got %s\nwant %s", what, dumpTable(g), dumpTable(w))
	}
}

func dumpTable(vs []VirtualServer) string {
	var b strings.Builder
	for _, v := range vs {
		fmt.Fprintf(&b, "\n  %s %+v", v.Service.Key, v.Service.Config)
		for _, d := range v.Destinations {
			fmt.Fprintf(&b, "\n    -> %s %+v", d.Key, d.Config)
		}
	}
	return b.String()
}

// kernelSchedulers lists the schedulers the running kernel ships as modules.
func kernelSchedulers(t *testing.T) []string {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	mods, _ := filepath.Glob(filepath.Join("/lib/modules", release, "kernel/net/netfilter/ipvs/ip_vs_*.ko*"))
	var out []string
	for _, m := range mods {
		name := strings.TrimPrefix(strings.SplitN(filepath.Base(m), ".", 2)[0], "ip_vs_")
		if name == "ftp" || strings.HasPrefix(name, "pe_") {
			continue
		}
		out = append(out, name)
	}
	if len(out) == 0 {
		testenv.Missing(t, testenv.InVM(), "no IPVS scheduler modules under /lib/modules/%s", release)
	}
	sort.Strings(out)
	return out
}

// fullTable exercises every field: families, protocols, fwmarks, every
// scheduler, scheduler flags, persistence, forwarding methods, tunnels and
// thresholds.
func fullTable(t *testing.T) []VirtualServer {
	var tab []VirtualServer
	for i, sched := range kernelSchedulers(t) {
		vs := VirtualServer{Service: Service{
			Key:    ServiceKey{Protocol: TCP, Address: netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)}), Port: 80},
			Config: ServiceConfig{Scheduler: sched},
		}}
		for j := range 3 {
			vs.Destinations = append(vs.Destinations, Destination{
				Key:    DestinationKey{Address: netip.AddrFrom4([4]byte{198, 19, byte(i), byte(j + 1)}), Port: 8080},
				Config: DestinationConfig{Weight: uint32(j + 1), Forward: Masquerade},
			})
		}
		tab = append(tab, vs)
	}
	v4 := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	tab = append(tab,
		VirtualServer{
			Service: Service{Key: ServiceKey{Protocol: TCP, Address: v4("198.18.0.1"), Port: 443},
				Config: ServiceConfig{Scheduler: "sh", Flags: FlagPersistent | FlagSHFallback | FlagSHPort, Timeout: 600, NetmaskBits: 24}},
			Destinations: []Destination{
				{Key: DestinationKey{Address: v4("198.19.0.1"), Port: 443}, Config: DestinationConfig{Weight: 10, Forward: DirectRoute, UpperThreshold: 1000, LowerThreshold: 800}},
				{Key: DestinationKey{Address: v4("198.19.0.2"), Port: 443}, Config: DestinationConfig{Weight: 0, Forward: DirectRoute}},
				{Key: DestinationKey{Address: v4("198.19.0.3"), Port: 443}, Config: DestinationConfig{Weight: 5, Forward: Tunnel, TunnelType: TunnelIPIP}},
			},
		},
		VirtualServer{
			Service: Service{Key: ServiceKey{Protocol: UDP, Address: v4("198.18.0.2"), Port: 53},
				Config: ServiceConfig{Scheduler: "mh", Flags: FlagOnePacket | FlagMHFallback | FlagMHPort}},
			Destinations: []Destination{
				{Key: DestinationKey{Address: v4("198.19.0.4"), Port: 53}, Config: DestinationConfig{Weight: 1, Forward: Tunnel, TunnelType: TunnelGUE, TunnelPort: 6080, TunnelFlags: TunnelChecksum}},
				{Key: DestinationKey{Address: v4("198.19.0.5"), Port: 53}, Config: DestinationConfig{Weight: 1, Forward: Tunnel, TunnelType: TunnelGRE, TunnelFlags: TunnelRemoteChecksum}},
			},
		},
		VirtualServer{
			Service: Service{Key: ServiceKey{Protocol: SCTP, Address: v4("198.18.0.3"), Port: 3868},
				Config: ServiceConfig{Scheduler: "rr", Flags: FlagPersistent, Timeout: 60, PersistenceEngine: "sip"}},
			Destinations: []Destination{
				{Key: DestinationKey{Address: v4("198.19.0.6"), Port: 3868}, Config: DestinationConfig{Weight: 2, Forward: Masquerade}},
			},
		},
		VirtualServer{
			Service: Service{Key: ServiceKey{Protocol: TCP, Address: v4("2001:db8::1"), Port: 80},
				Config: ServiceConfig{Scheduler: "wlc", Flags: FlagPersistent, Timeout: 30, NetmaskBits: 64}},
			Destinations: []Destination{
				{Key: DestinationKey{Address: v4("2001:db8:1::1"), Port: 80}, Config: DestinationConfig{Weight: 3, Forward: DirectRoute}},
				{Key: DestinationKey{Address: v4("2001:db8:1::2"), Port: 8080}, Config: DestinationConfig{Weight: 4, Forward: Masquerade, UpperThreshold: 7}},
				// An IPv4 real server behind an IPv6 VIP: tunnels only.
				{Key: DestinationKey{Address: v4("198.19.0.7"), Port: 80}, Config: DestinationConfig{Weight: 1, Forward: Tunnel, TunnelType: TunnelIPIP}},
			},
		},
		VirtualServer{
			Service: Service{Key: ServiceKey{Protocol: SCTP, Address: v4("2001:db8::2"), Port: 9}, Config: ServiceConfig{Scheduler: "lc"}},
		},
		VirtualServer{
			Service: Service{Key: ServiceKey{Family: IPv4, FWMark: 7}, Config: ServiceConfig{Scheduler: "wrr", Flags: FlagPersistent, Timeout: 120}},
			Destinations: []Destination{
				{Key: DestinationKey{Address: v4("198.19.0.8"), Port: 0}, Config: DestinationConfig{Weight: 1, Forward: DirectRoute}},
			},
		},
		VirtualServer{
			Service: Service{Key: ServiceKey{Family: IPv6, FWMark: 7}, Config: ServiceConfig{Scheduler: "rr"}},
			Destinations: []Destination{
				{Key: DestinationKey{Address: v4("2001:db8:1::9"), Port: 0}, Config: DestinationConfig{Weight: 1, Forward: DirectRoute}},
			},
		},
	)
	return tab
}

func TestKernelWriteEveryFieldReadBack(t *testing.T) {
	c, ns := newKernelClient(t)
	want := fullTable(t)
	apply(t, c, Diff(want, nil))

	requireEqualTables(t, "merlin's read-back", readTable(t, c), want)
	requireEqualTables(t, "ipvsadm -Sn", ipvsadmTable(t, ns), want)
	if ops := Diff(want, readTable(t, c)); len(ops) != 0 {
		t.Fatalf("no-op diff against the kernel's dump is not empty:\n%s", opsString(ops))
	}
	tab := readTable(t, c)
	if ops := Diff(tab, tab); len(ops) != 0 {
		t.Fatalf("diff of the dump against itself: %s", opsString(ops))
	}
}

func TestKernelReadsWhatIpvsadmWrote(t *testing.T) {
	c, ns := newKernelClient(t)
	var want []VirtualServer
	for _, vs := range fullTable(t) {
		// ipvsadm -R input here carries scheduler, persistence, forwarding
		// and weight; the other fields are covered by the test above.
		vs.Service.Config = ServiceConfig{Scheduler: vs.Service.Config.Scheduler, Flags: vs.Service.Config.Flags & FlagPersistent, Timeout: vs.Service.Config.Timeout}
		if vs.Service.Config.Flags == 0 {
			vs.Service.Config.Timeout = 0
		}
		var ds []Destination
		for _, d := range vs.Destinations {
			d.Config = DestinationConfig{Weight: d.Config.Weight, Forward: d.Config.Forward}
			ds = append(ds, d)
		}
		vs.Destinations = ds
		want = append(want, vs)
	}
	cmd := ns.Command("ipvsadm", "-R")
	cmd.Stdin = strings.NewReader(saveFormat(want))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ipvsadm -R: %v\n%s", err, out)
	}
	requireEqualTables(t, "merlin's read of ipvsadm's table", readTable(t, c), want)
}

func TestKernelUpdatesInPlace(t *testing.T) {
	c, ns := newKernelClient(t)
	want := fullTable(t)
	apply(t, c, Diff(want, nil))
	// Change a weight, a scheduler, a forwarding method and a tunnel port.
	want[0].Destinations[0].Config.Weight = 0
	want[1].Service.Config.Scheduler = "wlc"
	want[2].Destinations[1].Config.Forward = DirectRoute
	for i := range want {
		for j := range want[i].Destinations {
			if d := &want[i].Destinations[j]; d.Config.TunnelType == TunnelGUE {
				d.Config.TunnelPort = 7000
			}
		}
	}
	ops := Diff(want, readTable(t, c))
	for _, op := range ops {
		if op.Kind != OpUpdateService && op.Kind != OpUpdateDestination {
			t.Fatalf("change produced %s, want updates only", op)
		}
	}
	if len(ops) != 4 {
		t.Fatalf("want 4 updates, got:\n%s", opsString(ops))
	}
	apply(t, c, ops)
	requireEqualTables(t, "after updates", readTable(t, c), want)
	requireEqualTables(t, "ipvsadm after updates", ipvsadmTable(t, ns), want)
}

func TestKernelErrorsReportedOnTheRightOp(t *testing.T) {
	c, _ := newKernelClient(t)
	a := svc("198.18.0.1", 80, "rr")
	missing := svc("198.18.0.99", 80, "rr")
	d := dst("198.19.0.1", 80, 1)
	apply(t, c, []Op{{Kind: OpAddService, Service: a}, {Kind: OpAddDestination, Service: a, Destination: d}})

	badSched := svc("198.18.0.2", 80, "nosuchsched")
	ops := []Op{
		{Kind: OpAddService, Service: svc("198.18.0.3", 80, "rr")},                     // 0 ok
		{Kind: OpAddService, Service: a},                                               // 1 EEXIST
		{Kind: OpUpdateService, Service: missing},                                      // 2 ESRCH
		{Kind: OpAddService, Service: badSched},                                        // 3 ENOENT
		{Kind: OpAddDestination, Service: a, Destination: d},                           // 4 EEXIST
		{Kind: OpDeleteDestination, Service: a, Destination: dst("198.19.0.9", 80, 1)}, // 5 ENOENT
		{Kind: OpAddDestination, Service: missing, Destination: d},                     // 6 ESRCH
		{Kind: OpDeleteService, Service: missing},                                      // 7 ESRCH
		{Kind: OpAddDestination, Service: a, Destination: dst("198.19.0.2", 80, 1)},    // 8 ok
	}
	err := c.Apply(ctxT(t), ops)
	var be *BatchError
	if !errors.As(err, &be) {
		t.Fatalf("want *BatchError, got %v", err)
	}
	want := map[int]unix.Errno{1: unix.EEXIST, 2: unix.ESRCH, 3: unix.ENOENT, 4: unix.EEXIST, 5: unix.ENOENT, 6: unix.ESRCH, 7: unix.ESRCH}
	if len(be.Failed) != len(want) {
		t.Fatalf("failed ops: %v", err)
	}
	for _, f := range be.Failed {
		if w, ok := want[f.Index]; !ok || !errors.Is(f, w) {
			t.Errorf("op %d (%s) failed with %v, want %v", f.Index, f.Op, f.Err, want[f.Index])
		}
		if f.Op != ops[f.Index] {
			t.Errorf("op %d reported as %s", f.Index, f.Op)
		}
	}
	if !errors.Is(err, os.ErrExist) {
		t.Errorf("errors.Is(batch error, os.ErrExist) = false")
	}
	got := readTable(t, c)
	wantTab := []VirtualServer{
		{Service: a, Destinations: []Destination{d, dst("198.19.0.2", 80, 1)}},
		{Service: svc("198.18.0.3", 80, "rr")},
	}
	requireEqualTables(t, "table after a batch with failures", got, wantTab)
}

func TestKernelOneBadOpInTheMiddle(t *testing.T) {
	c, _ := newKernelClient(t)
	var want []VirtualServer
	var ops []Op
	for i := range 200 {
		s := svc(netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(i%250 + 1)}).String(), 80, "wrr")
		if i == 100 {
			s.Config.Scheduler = "bogus"
		} else {
			want = append(want, VirtualServer{Service: s})
		}
		ops = append(ops, Op{Kind: OpAddService, Service: s})
	}
	err := c.Apply(ctxT(t), ops)
	var be *BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 100 || !errors.Is(be.Failed[0], unix.ENOENT) {
		t.Fatalf("want exactly op 100 to fail with ENOENT, got %v", err)
	}
	requireEqualTables(t, "the other 199 services", readTable(t, c), want)
}

// largeTable has services×dests destinations behind distinct VIPs.
func largeTable(services, dests int) []VirtualServer {
	tab := make([]VirtualServer, services)
	for i := range tab {
		tab[i].Service = Service{
			Key:    ServiceKey{Protocol: TCP, Address: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), Port: 80},
			Config: ServiceConfig{Scheduler: "wlc"},
		}
		for j := range dests {
			tab[i].Destinations = append(tab[i].Destinations, Destination{
				Key:    DestinationKey{Address: netip.AddrFrom4([4]byte{198, 19, byte(j), byte(i % 251)}), Port: uint16(8000 + i/251)},
				Config: DestinationConfig{Weight: 1, Forward: DirectRoute},
			})
		}
	}
	return tab
}

func TestKernelHundredThousandOps(t *testing.T) {
	c, _ := newKernelClient(t)
	tab := largeTable(10000, 9) // 10,000 services + 90,000 destinations
	ops := Diff(tab, nil)
	if len(ops) != 100000 {
		t.Fatalf("built %d ops", len(ops))
	}
	apply(t, c, ops)
	got := readTable(t, c)
	if len(got) != 10000 {
		t.Fatalf("kernel has %d services", len(got))
	}
	if rest := Diff(tab, got); len(rest) != 0 {
		t.Fatalf("%d ops missing after apply, first %s", len(rest), rest[0])
	}
	// The same batch again: every op fails, and every failure must be
	// reported — no acknowledgement may be lost.
	err := c.Apply(ctxT(t), ops)
	var be *BatchError
	if !errors.As(err, &be) {
		t.Fatalf("re-apply: want *BatchError, got %v", err)
	}
	if len(be.Failed) != len(ops) {
		t.Fatalf("re-apply reported %d failures of %d", len(be.Failed), len(ops))
	}
	for i, f := range be.Failed {
		if f.Index != i || !errors.Is(f, unix.EEXIST) {
			t.Fatalf("failure %d: op %d: %v", i, f.Index, f.Err)
		}
	}
}

func TestKernelContextHonoured(t *testing.T) {
	ns := testenv.NewNetNS(t)
	// Small batches, so that a deadline can fall between two of them.
	c, err := Open(Options{NetNS: ns.FD, MaxBatchOps: 500})
	if errors.Is(err, ErrNoIPVS) {
		testenv.Missing(t, testenv.InVM(), "%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ops := Diff(largeTable(2000, 4), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = c.Apply(ctx, ops)
	var be *BatchError
	if !errors.As(err, &be) && !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
	if tab := readTable(t, c); len(tab) != 0 {
		t.Fatalf("cancelled Apply changed the kernel: %d services", len(tab))
	}

	// A context that ends mid-way: every op is either applied, or reported
	// as not sent / unknown; nothing is reported failed that applied, and
	// the client keeps working afterwards. The context ends as soon as a
	// second client sees the first services in the kernel; batches of 50
	// ops leave most of the 10,000 still to send then.
	small, err := Open(Options{NetNS: ns.FD, MaxBatchOps: 50})
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	watcher, err := Open(Options{NetNS: ns.FD})
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer cancel()
		for ctx.Err() == nil {
			if svcs, err := watcher.Services(ctx); err != nil || len(svcs) > 0 {
				return
			}
		}
	}()
	c = small
	err = c.Apply(ctx, ops)
	failed := map[int]error{}
	if errors.As(err, &be) {
		for _, f := range be.Failed {
			if !errors.Is(f, ErrNotSent) && !errors.Is(f, ErrOutcomeUnknown) {
				t.Fatalf("unexpected failure %v", f)
			}
			failed[f.Index] = f.Err
		}
	} else if err != nil {
		t.Fatalf("deadline: %v", err)
	}
	tab := readTable(t, c)
	present := map[string]bool{}
	for _, v := range tab {
		present[v.Service.Key.String()] = true
		for _, d := range v.Destinations {
			present[v.Service.Key.String()+"/"+d.Key.String()] = true
		}
	}
	applied, unknown := 0, 0
	for i, op := range ops {
		if errors.Is(failed[i], ErrOutcomeUnknown) {
			unknown++
		}
		name := op.Service.Key.String()
		if op.Kind == OpAddDestination {
			name += "/" + op.Destination.Key.String()
		}
		if present[name] {
			applied++
			if errors.Is(failed[i], ErrNotSent) {
				t.Fatalf("op %d (%s) reported not sent but applied", i, op)
			}
		} else if failed[i] == nil {
			t.Fatalf("op %d (%s) reported applied but missing", i, op)
		}
	}
	t.Logf("cancelled after the first services appeared: %d of %d ops applied, %d reported failed, %d of them of unknown outcome",
		applied, len(ops), len(failed), unknown)
	if applied == 0 || applied == len(ops) {
		t.Errorf("the cancellation did not fall mid-batch; the test proves nothing")
	}
	apply(t, c, Diff(largeTable(2000, 4), readTable(t, c)))
	if rest := Diff(largeTable(2000, 4), readTable(t, c)); len(rest) != 0 {
		t.Fatalf("client did not recover: %d ops left", len(rest))
	}
}

func TestKernelNamespacesAreSeparate(t *testing.T) {
	c1, ns1 := newKernelClient(t)
	c2, ns2 := newKernelClient(t)
	apply(t, c1, Diff([]VirtualServer{{Service: svc("198.18.0.1", 80, "rr")}}, nil))
	if tab := readTable(t, c2); len(tab) != 0 {
		t.Fatalf("second namespace sees %d services", len(tab))
	}
	if out := ns2.Run(t, "ipvsadm", "-Sn"); strings.TrimSpace(out) != "" {
		t.Fatalf("ipvsadm in the second namespace: %q", out)
	}
	if out := ns1.Run(t, "ipvsadm", "-Sn"); !strings.Contains(out, "198.18.0.1:80") {
		t.Fatalf("ipvsadm in the first namespace: %q", out)
	}
}

func TestKernelInfoTimeoutsFlush(t *testing.T) {
	c, ns := newKernelClient(t)
	ctx := ctxT(t)
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if out := ns.Run(t, "ipvsadm", "-Ln"); !strings.Contains(out, fmt.Sprintf("version %s (size=%d)", info.Version, info.ConnTableSize)) {
		t.Fatalf("info %+v, ipvsadm says %q", info, out)
	}
	if err := c.SetTimeouts(ctx, Timeouts{TCP: 901, TCPFin: 121, UDP: 301}); err != nil {
		t.Fatal(err)
	}
	got, err := c.Timeouts(ctx)
	if err != nil || got != (Timeouts{TCP: 901, TCPFin: 121, UDP: 301}) {
		t.Fatalf("timeouts %+v, %v", got, err)
	}
	if out := ns.Run(t, "ipvsadm", "-L", "--timeout"); !strings.Contains(out, "901 121 301") {
		t.Fatalf("ipvsadm --timeout: %q", out)
	}
	if err := c.SetTimeouts(ctx, Timeouts{UDP: 302}); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Timeouts(ctx); got != (Timeouts{TCP: 901, TCPFin: 121, UDP: 302}) {
		t.Fatalf("zero fields changed timeouts: %+v", got)
	}

	apply(t, c, Diff(largeTable(50, 2), nil))
	if _, err := c.Service(ctx, largeTable(1, 0)[0].Service.Key); err != nil {
		t.Fatalf("get service: %v", err)
	}
	if _, err := c.Service(ctx, svc("198.18.0.250", 1, "rr").Key); !errors.Is(err, unix.ESRCH) {
		t.Fatalf("get missing service: %v", err)
	}
	want := largeTable(50, 2)[7]
	if got, err := c.Lookup(ctx, want.Service.Key); err != nil || got == nil || len(Diff([]VirtualServer{want}, []VirtualServer{*got})) != 0 {
		t.Fatalf("lookup %s: %+v, %v", want.Service.Key, got, err)
	}
	if got, err := c.Lookup(ctx, svc("198.18.0.250", 1, "rr").Key); got != nil || err != nil {
		t.Fatalf("lookup of a missing service: %+v, %v", got, err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if tab := readTable(t, c); len(tab) != 0 {
		t.Fatalf("%d services after flush", len(tab))
	}
}

// TestKernelReportOverflow fills a small receive buffer with failure
// reports. With the batch size derived from the buffer, every failure is
// reported exactly; with that limit lifted, the kernel drops reports, and
// Apply must say which outcomes are unknown instead of calling them applied.
func TestKernelReportOverflow(t *testing.T) {
	ns := testenv.NewNetNS(t)
	open := func() *Client {
		c, err := Open(Options{NetNS: ns.FD, ReceiveBuffer: 128 << 10})
		if errors.Is(err, ErrNoIPVS) {
			testenv.Missing(t, testenv.InVM(), "%v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c := open()
	ops := Diff(largeTable(3000, 0), nil)
	apply(t, c, ops)

	// Derived batch size: all 3000 failures reported, each on its op.
	err := c.Apply(ctxT(t), ops)
	var be *BatchError
	if !errors.As(err, &be) || len(be.Failed) != len(ops) {
		t.Fatalf("want %d reported failures, got %v", len(ops), err)
	}
	for i, f := range be.Failed {
		if f.Index != i || !errors.Is(f, unix.EEXIST) {
			t.Fatalf("failure %d: op %d: %v", i, f.Index, f.Err)
		}
	}
	t.Logf("derived limit: %d ops per sendmsg", c.maxOps)

	// Limit lifted: reports overflow the buffer.
	c2 := open()
	c2.maxOps = len(ops)
	err = c2.Apply(ctxT(t), ops)
	if !errors.As(err, &be) || len(be.Failed) != len(ops) {
		t.Fatalf("every op failed or is unknown, yet %v", err)
	}
	unknown := 0
	for _, f := range be.Failed {
		switch {
		case errors.Is(f, ErrOutcomeUnknown):
			unknown++
		case !errors.Is(f, unix.EEXIST):
			t.Fatalf("op %d: %v", f.Index, f.Err)
		}
	}
	if unknown == 0 || !errors.Is(be, unix.ENOBUFS) {
		t.Fatalf("the overflow went unnoticed (%d unknown)", unknown)
	}
	if c2.maxOps >= len(ops) {
		t.Fatalf("batch size not reduced after ENOBUFS: %d", c2.maxOps)
	}
	t.Logf("limit lifted: %d of %d outcomes unknown after ENOBUFS; batch size now %d", unknown, len(ops), c2.maxOps)
	apply(t, c2, Diff(largeTable(3001, 0), readTable(t, c2))) // and it still works
}

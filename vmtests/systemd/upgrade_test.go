package systemd

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// testDebNext is the same tree as testDeb, stamped v1.2.4: the upgrade.
const testDebNext = "../../build/merlin_1.2.4-1_amd64.deb"

// siteConfig is the node's /etc/merlin/merlin.yaml: counters on the
// uplink (XDP) and toward the backend (TC), BGP with the router with
// graceful restart, exec checks off (no health-exec-dir: the default).
const siteConfig = `node: vm1
vip-interface: merlin0
director-sysctls: true
counters-xdp-interfaces: uplink0
counters-tc-interfaces: srv0
bgp:
  local_as: 65001
  router_id: 198.18.0.11
  peers:
    - address: 198.18.0.1
      as: 65000
      hold_time: 9s
      connect_retry: 1s
      graceful_restart: 120s
`

// TestVMPackageRestartAndUpgrade: the package under real systemd on a node
// with BGP to a bird2 router and the eBPF counters attached, a client
// connecting through the VIP every 100 ms: `systemctl restart merlin` and
// an upgrade by `dpkg -i` of a newer build (with
// /etc/merlin/restart-on-upgrade) fail no connection, leave the kernel
// table as it was, and the new version shows in meradm status. Purge then
// leaves nothing of merlin's attached.
func TestVMPackageRestartAndUpgrade(t *testing.T) {
	if !testenv.InVM() {
		testenv.Missing(t, false, "needs the VM with systemd (make vmtest)")
	}
	for _, deb := range []string{testDeb, testDebNext} {
		if _, err := os.Stat(deb); err != nil {
			t.Fatalf("%s: %v (scripts/vmdebs.sh builds it before the VM tests)", deb, err)
		}
	}
	t.Cleanup(journalOnFailure(t))
	s := newSite(t)
	t.Cleanup(func() {
		_ = exec.Command("ipvsadm", "-C").Run()
		_ = exec.Command("ip", "link", "del", "merlin0").Run()
	})
	t0 := time.Now()
	step := func(what string) { t.Logf("+%s %s", time.Since(t0).Round(100*time.Millisecond), what) }

	run(t, "dpkg", "-i", testDeb)
	step("v1.2.3 installed")
	if err := os.WriteFile("/etc/merlin/merlin.yaml", []byte(siteConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "systemctl", "enable", "--now", "merlin")
	run(t, "meradm", "service", "add", "web", "tcp", siteVIP+":80", "-s", "wlc")
	run(t, "meradm", "server", "add", "web", siteBackend, "-f", "masq")
	s.waitAnnounced()
	eventually(t, "the counters attached", func() error {
		if st := output(t, "meradm", "status"); !strings.Contains(st, "vm1: traffic counters on (uplink0 xdp") {
			return fmt.Errorf("status:\n%s", st)
		}
		return nil
	})
	if v := strings.TrimSpace(output(t, "sysctl", "-n", "net.ipv4.vs.conntrack")); v != "1" {
		t.Errorf("net.ipv4.vs.conntrack is %q: the director sysctls were not set from inside the sandbox", v)
	}
	step("v1.2.3 serving: BGP established, the VIP routed to the node, counters attached")
	cl := s.startClients()
	cl.waitMore(t, 10)
	synBefore := waitCounted(t, 10)
	before := table(t)

	run(t, "systemctl", "restart", "merlin")
	step("systemctl restart merlin returned")
	waitServing(t, s)
	cl.waitMore(t, 20)
	step("serving again after the restart")
	if ok, fail := cl.ok.Load(), cl.fail.Load(); fail != 0 {
		t.Fatalf("restart: %d of %d connections failed, the last: %v", fail, ok+fail, cl.lastErr.Load())
	}

	if err := os.WriteFile("/etc/merlin/restart-on-upgrade", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "dpkg", "-i", testDebNext)
	step("dpkg -i v1.2.4 returned")
	eventually(t, "v1.2.4 in meradm status", func() error {
		if st := output(t, "meradm", "status"); !strings.Contains(st, "v1.2.4") {
			return fmt.Errorf("status:\n%s", st)
		}
		return nil
	})
	waitServing(t, s)
	cl.waitMore(t, 20)
	step("v1.2.4 serving")
	ok, fail := cl.ok.Load(), cl.fail.Load()
	cl.finish()
	if fail != 0 {
		t.Fatalf("upgrade: %d of %d connections failed, the last: %v", fail, ok+fail, cl.lastErr.Load())
	}
	t.Logf("%d connections through the VIP during a restart and an upgrade, none failed", ok)
	if after := table(t); after != before {
		t.Errorf("the kernel table changed across the restart and the upgrade:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// The counters went on from their pins through both: no count lost.
	waitCounted(t, synBefore+40)
	run(t, "systemctl", "stop", "merlin")
	if r := s.routeToVIP(); !strings.Contains(r, "via "+nodeAddr) {
		t.Errorf("the router lost the VIP's route when merlin stopped (graceful restart keeps it): %q", r)
	}
	if err := s.connect(); err != nil {
		t.Errorf("a connection through the VIP with merlin stopped: %v", err)
	}
	run(t, "dpkg", "--purge", "merlin")
	step("stopped (still forwarding) and purged")
	for _, dev := range []string{"uplink0", "srv0"} {
		if out := output(t, "bpftool", "net", "show", "dev", dev); strings.Contains(out, "merlin") || strings.Contains(out, "id ") {
			t.Errorf("eBPF programs left on %s after dpkg --purge:\n%s", dev, out)
		}
	}
	if _, err := os.Stat("/sys/fs/bpf/merlin"); err == nil {
		t.Errorf("counter pins are left after dpkg --purge")
	}
}

// waitCounted waits until the eBPF counters saw at least n connection
// attempts to the service, on the way in (XDP) and out to the backend
// (TC), and returns the XDP count.
func waitCounted(t *testing.T, n float64) float64 {
	t.Helper()
	var syn float64
	eventually(t, fmt.Sprintf("%v connections counted by XDP and TC", n), func() error {
		syn = metric(t, "merlin_xdp_syn_total", `service="web"`)
		fwd := metric(t, "merlin_tc_forwarded_syn_total", `service="web"`)
		if syn < n || fwd < n {
			return fmt.Errorf("merlin_xdp_syn_total %v, merlin_tc_forwarded_syn_total %v", syn, fwd)
		}
		return nil
	})
	return syn
}

// waitServing waits for a merlin started anew: active (READY=1), its BGP
// session up and its counters on.
func waitServing(t *testing.T, s *site) {
	t.Helper()
	eventually(t, "merlin active with its BGP session up and its counters on", func() error {
		if st := strings.TrimSpace(output(t, "systemctl", "is-active", "merlin")); st != "active" {
			return fmt.Errorf("merlin is %s", st)
		}
		if up := metric(t, "merlin_bgp_session_up", ""); up != 1 {
			return fmt.Errorf("merlin_bgp_session_up %v; bird:\n%s", up, s.birdc("show", "protocols", "node1"))
		}
		if up := metric(t, "merlin_counters_up", ""); up != 1 {
			return fmt.Errorf("merlin_counters_up %v", up)
		}
		return nil
	})
}

// table is the kernel's IPVS table without counters, sorted.
func table(t *testing.T) string {
	lines := strings.Split(strings.TrimSpace(output(t, "ipvsadm", "-Sn")), "\n")
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// metric sums the series of name on the node's /metrics whose labels
// contain match (-1 when merlin does not answer).
func metric(t *testing.T, name, match string) float64 {
	resp, err := http.Get("http://127.0.0.1:4283/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		series, value, ok := strings.Cut(line, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) || !strings.Contains(series, match) {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			sum += v
		}
	}
	return sum
}

// journalOnFailure returns a cleanup that logs merlin's journal since now
// and its unit's status if the test failed.
func journalOnFailure(t *testing.T) func() {
	since := fmt.Sprintf("@%d", time.Now().Unix())
	return func() {
		if !t.Failed() {
			return
		}
		t.Logf("journal:\n%s", output(t, "journalctl", "-u", "merlin", "--no-pager", "--since", since))
		t.Logf("status:\n%s", output(t, "systemctl", "status", "merlin", "--no-pager"))
	}
}

package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// Real routers: Debian's bird2 and gobgpd, each a separate process in a
// network namespace of its own, reached over a veth pair (routers refuse
// loopback next hops). Needs root.

// routerNS makes a namespace reached from here at nsAddr over a veth
// whose near end has hostAddr (both /30).
func routerNS(t *testing.T, link, hostAddr, nsAddr string) *testenv.NetNS {
	t.Helper()
	ns := testenv.NewNetNS(t)
	run := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", link).Run() })
	run("addr", "add", hostAddr+"/30", "dev", link)
	run("link", "set", link, "up")
	ns.Run(t, "ip", "addr", "add", nsAddr+"/30", "dev", "eth0")
	ns.Run(t, "ip", "link", "set", "eth0", "up")
	return ns
}

func lookPeer(t *testing.T, name string) string {
	path, err := exec.LookPath(name)
	if err != nil {
		testenv.Missing(t, testenv.PeersPromised(), "%s not installed (Debian's bird2 / gobgpd)", name)
	}
	return path
}

// daemon runs a router process in ns until the test ends.
func daemon(t *testing.T, ns *testenv.NetNS, name string, args ...string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(name, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", filepath.Base(name), out)
		}
	})
}

func TestSpeakerWithBird2(t *testing.T) {
	bird := lookPeer(t, "bird")
	birdc := lookPeer(t, "birdc")
	ns := routerNS(t, "mbgp-bird", "198.18.5.1", "198.18.5.2")
	dir := t.TempDir()
	port := 1179
	conf := filepath.Join(dir, "bird.conf")
	sock := filepath.Join(dir, "bird.ctl")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`router id 192.0.2.254;
protocol device {}
protocol bgp merlin {
	local 198.18.5.2 port %d as 65000;
	neighbor 198.18.5.1 as 65001;
	passive on;
	password "s3cret";
	hold time 9;
	ipv4 { import all; export none; };
}
`, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	daemon(t, ns, bird, "-f", "-c", conf, "-s", sock)
	// The speaker as merlin runs it: in a process of its own.
	s := startSupervised(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), Peers: []Peer{{
		Address: netip.MustParseAddr("198.18.5.2"), Port: port, AS: 65000, Local: netip.MustParseAddr("198.18.5.1"),
		Password: "s3cret", HoldTime: 9 * time.Second, ConnectRetry: time.Second}}}, testLog(t))
	shut := HostRoute(netip.MustParseAddr("198.18.0.2"))
	shut.Communities = []Community{GracefulShutdown}
	if err := s.Set(context.Background(), []Route{HostRoute(netip.MustParseAddr("198.18.0.1")), shut}); err != nil {
		t.Fatal(err)
	}
	show := func() string {
		out, _ := ns.Command(birdc, "-s", sock, "show", "route", "all", "protocol", "merlin").CombinedOutput()
		return string(out)
	}
	testenv.Eventually(t, "bird to hold both routes", func() bool {
		out := show()
		return strings.Contains(out, "198.18.0.1/32") && strings.Contains(out, "198.18.0.2/32")
	})
	if out := show(); !strings.Contains(out, "(65535,0)") || !strings.Contains(out, "BGP.next_hop: 198.18.5.1") {
		t.Errorf("bird's routes lack the GRACEFUL_SHUTDOWN community or the next hop:\n%s", out)
	}
	if err := s.Set(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "bird to lose both routes", func() bool { return !strings.Contains(show(), "/32") })
}

func TestSpeakerWithGobgpd(t *testing.T) {
	gobgpd := lookPeer(t, "gobgpd")
	gobgp := lookPeer(t, "gobgp")
	ns := routerNS(t, "mbgp-gobgp", "198.18.5.5", "198.18.5.6")
	dir := t.TempDir()
	port, api := 1179, 50051
	conf := filepath.Join(dir, "gobgpd.toml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`[global.config]
  as = 65000
  router-id = "192.0.2.253"
  port = %d
  local-address-list = ["198.18.5.6"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "198.18.5.5"
    peer-as = 65001
  [neighbors.transport.config]
    passive-mode = true
`, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	daemon(t, ns, gobgpd, "-f", conf, "--api-hosts", fmt.Sprintf("127.0.0.1:%d", api), "--log-level", "warn")
	s := startSpeaker(t, Config{LocalAS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), Peers: []Peer{{
		Address: netip.MustParseAddr("198.18.5.6"), Port: port, AS: 65000, Local: netip.MustParseAddr("198.18.5.5"), ConnectRetry: time.Second}}})
	want := []Route{HostRoute(netip.MustParseAddr("198.18.0.1")), HostRoute(netip.MustParseAddr("198.18.0.3"))}
	if err := s.Set(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	rib := func() string {
		out, _ := ns.Command(gobgp, "-p", fmt.Sprint(api), "global", "rib").CombinedOutput()
		return string(out)
	}
	testenv.Eventually(t, "gobgpd to hold both routes", func() bool {
		out := rib()
		return strings.Contains(out, "198.18.0.1/32") && strings.Contains(out, "198.18.0.3/32")
	})
	if err := s.Set(context.Background(), want[1:]); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "gobgpd to lose 198.18.0.1", func() bool {
		out := rib()
		return !strings.Contains(out, "198.18.0.1/32") && strings.Contains(out, "198.18.0.3/32")
	})
}

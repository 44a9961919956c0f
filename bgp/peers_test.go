package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/testrouter"
)

// Real routers: Debian's bird2 and gobgpd, each a separate process in a
// network namespace of its own (internal/testrouter). Needs root.

func TestSpeakerWithBird2(t *testing.T) {
	bird := testrouter.Look(t, "bird")
	birdc := testrouter.Look(t, "birdc")
	ns := testrouter.Link(t, "mbgp-bird", "198.18.5.1", "198.18.5.2")
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
	testrouter.Daemon(t, ns, bird, "-f", "-c", conf, "-s", sock)
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
	gobgpd := testrouter.Look(t, "gobgpd")
	gobgp := testrouter.Look(t, "gobgp")
	ns := testrouter.Link(t, "mbgp-gobgp", "198.18.5.5", "198.18.5.6")
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
	testrouter.Daemon(t, ns, gobgpd, "-f", conf, "--api-hosts", fmt.Sprintf("127.0.0.1:%d", api), "--log-level", "warn")
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

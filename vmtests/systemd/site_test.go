package systemd

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/netns"
)

// The site around the node the package runs on (the guest's root
// namespace, as merlin under systemd sees it):
//
//	client 198.18.1.2 ── router 198.18.1.1 / 198.18.0.1 (bird2, BGP AS 65000)
//	  ── uplink0 198.18.0.11 node (merlin, AS 65001) srv0 198.18.2.1 ── backend 198.18.2.2:8080
//
// The router learns the VIP from merlin only; the backend's replies go
// back through the node (NAT).
const (
	siteVIP     = "198.19.0.10"
	siteBackend = "198.18.2.2:8080"
	nodeAddr    = "198.18.0.11"
	routerAddr  = "198.18.0.1"
)

type site struct {
	t                       *testing.T
	router, client, backend *netns.NS
	dir, birdSock           string
	bird                    *exec.Cmd
	birdDone                chan struct{}
	backendLn               net.Listener
}

// newSite builds the namespaces and links and starts bird2 in the
// router's; the test's cleanup removes them.
func newSite(t *testing.T) *site {
	s := &site{t: t, dir: t.TempDir()}
	t.Cleanup(s.close)
	var err error
	for _, ns := range []**netns.NS{&s.router, &s.client, &s.backend} {
		if *ns, err = netns.New("site-"); err != nil {
			t.Fatal(err)
		}
	}
	steps := [][]string{
		{"ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", s.router.Name},
		{"ip", "addr", "add", nodeAddr + "/24", "dev", "uplink0"},
		{"ip", "link", "set", "uplink0", "up"},
		{"ip", "route", "add", "198.18.1.0/24", "via", routerAddr},
		{"ip", "link", "add", "srv0", "type", "veth", "peer", "name", "eth0", "netns", s.backend.Name},
		{"ip", "addr", "add", "198.18.2.1/24", "dev", "srv0"},
		{"ip", "link", "set", "srv0", "up"},
		{"ip", "link", "add", "vclient", "type", "veth", "peer", "name", "eth0", "netns", s.client.Name},
		{"ip", "link", "set", "vclient", "netns", s.router.Name},
	}
	for _, c := range steps {
		run(t, c[0], c[1:]...)
	}
	inNS := map[*netns.NS][][]string{
		s.router: {{"ip", "addr", "add", routerAddr + "/24", "dev", "eth0"}, {"ip", "link", "set", "eth0", "up"},
			{"ip", "addr", "add", "198.18.1.1/24", "dev", "vclient"}, {"ip", "link", "set", "vclient", "up"},
			{"sysctl", "-qw", "net.ipv4.ip_forward=1"}},
		s.client: {{"ip", "addr", "add", "198.18.1.2/24", "dev", "eth0"}, {"ip", "link", "set", "eth0", "up"},
			{"ip", "route", "add", "default", "via", "198.18.1.1"}},
		s.backend: {{"ip", "addr", "add", "198.18.2.2/24", "dev", "eth0"}, {"ip", "link", "set", "eth0", "up"},
			{"ip", "route", "add", "default", "via", "198.18.2.1"}, {"sysctl", "-qw", "net.ipv4.ip_forward=0"}},
	}
	for ns, cmds := range inNS {
		for _, c := range cmds {
			if out, err := ns.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%s in %s: %v: %s", strings.Join(c, " "), ns.Name, err, out)
			}
		}
	}
	s.serveBackend()
	s.startBird()
	return s
}

// serveBackend answers each connection with "backend" and echoes.
func (s *site) serveBackend() {
	if err := s.backend.Do(func() (err error) { s.backendLn, err = net.Listen("tcp4", siteBackend); return err }); err != nil {
		s.t.Fatal(err)
	}
	go func() {
		for {
			conn, err := s.backendLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				fmt.Fprintln(conn, "backend")
				_, _ = io.Copy(conn, conn)
			}()
		}
	}()
}

// startBird runs Debian's bird2 as the router: passive session to the
// node with graceful restart (the stale routes stay while merlin
// restarts), what it learns installed in the router's kernel.
func (s *site) startBird() {
	conf := fmt.Sprintf(`router id %[1]s;
protocol device { scan time 5; }
protocol kernel { ipv4 { import none; export all; }; merge paths on; }
protocol bgp node1 {
	local %[1]s as 65000;
	neighbor %[2]s as 65001;
	passive on;
	hold time 9;
	error wait time 1, 10;
	graceful restart on;
	ipv4 { import all; export none; };
}
`, routerAddr, nodeAddr)
	path := filepath.Join(s.dir, "bird.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.birdSock = filepath.Join(s.dir, "bird.ctl")
	log, err := os.Create(filepath.Join(s.dir, "bird.log"))
	if err != nil {
		s.t.Fatal(err)
	}
	s.bird = s.router.Command("bird", "-f", "-c", path, "-s", s.birdSock)
	s.bird.Stdout, s.bird.Stderr = log, log
	if err := s.bird.Start(); err != nil {
		s.t.Fatalf("start bird: %v", err)
	}
	s.birdDone = make(chan struct{})
	go func() { _ = s.bird.Wait(); log.Close(); close(s.birdDone) }()
}

func (s *site) birdc(args ...string) string {
	out, _ := exec.Command("birdc", append([]string{"-s", s.birdSock}, args...)...).CombinedOutput()
	return string(out)
}

// routeToVIP is the router's kernel route to the VIP ("" when it has none).
func (s *site) routeToVIP() string {
	out, _ := s.router.Command("ip", "route", "show", siteVIP).CombinedOutput()
	return strings.TrimSpace(string(out))
}

// waitAnnounced waits for the session and the VIP's route through the node.
func (s *site) waitAnnounced() {
	s.t.Helper()
	eventually(s.t, "the router's route to the VIP through the node", func() error {
		if r := s.routeToVIP(); !strings.Contains(r, "via "+nodeAddr) {
			return fmt.Errorf("route %q; bird:\n%s", r, s.birdc("show", "protocols", "all", "node1"))
		}
		return nil
	})
}

// connect opens one connection from the client to the VIP and reads the
// backend's greeting.
func (s *site) connect() error {
	var conn net.Conn
	if err := s.client.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp4", siteVIP+":80", 3*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if strings.TrimSpace(line) != "backend" {
		return fmt.Errorf("greeting %q", line)
	}
	return nil
}

// clients connects every 100 ms until stop, counting what worked and what
// failed (bounded in count: stopped long before).
type clients struct {
	ok, fail   atomic.Int64
	lastErr    atomic.Value
	stop, done chan struct{}
}

func (s *site) startClients() *clients {
	c := &clients{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for range 100000 {
			select {
			case <-c.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if err := s.connect(); err != nil {
				c.fail.Add(1)
				c.lastErr.Store(fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
				continue
			}
			c.ok.Add(1)
		}
	}()
	s.t.Cleanup(c.finish)
	return c
}

// waitMore waits for n more connections to work than so far.
func (c *clients) waitMore(t *testing.T, n int64) {
	t.Helper()
	want := c.ok.Load() + n
	eventually(t, fmt.Sprintf("%d more connections through the VIP", n), func() error {
		if got := c.ok.Load(); got < want {
			return fmt.Errorf("%d of %d worked, %d failed", got, want, c.fail.Load())
		}
		return nil
	})
}

func (c *clients) finish() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

func (s *site) close() {
	if s.backendLn != nil {
		s.backendLn.Close()
	}
	if s.bird != nil && s.bird.Process != nil {
		_ = s.bird.Process.Kill()
		<-s.birdDone
	}
	if s.t.Failed() {
		b, _ := os.ReadFile(filepath.Join(s.dir, "bird.log"))
		s.t.Logf("bird log:\n%s", b)
	}
	for _, ns := range []*netns.NS{s.router, s.client, s.backend} {
		if ns != nil {
			_ = ns.Delete()
		}
	}
	_ = exec.Command("ip", "link", "del", "uplink0").Run()
	_ = exec.Command("ip", "link", "del", "srv0").Run()
}

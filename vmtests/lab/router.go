package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/merlin-ipvs/merlin/internal/iproute"
)

// The lab's router is the VM's root namespace (br0, 198.18.0.1): with BGP
// it runs Debian's bird2, peers with every node, honours GRACEFUL_SHUTDOWN
// (RFC 8326) and installs what it learns into its kernel with multipath.

// RouterAS and NodeAS are the lab's AS numbers.
const (
	RouterAS = 65000
	NodeAS   = 65001
	RouterIP = "198.18.0.1"
)

// BGPArgs are a node's merlin flags to peer with the lab's router.
func BGPArgs(n *Node, peerOpts string) []string {
	peer := fmt.Sprintf("address=%s,as=%d,hold_time=9s,connect_retry=1s", RouterIP, RouterAS)
	if peerOpts != "" {
		peer += "," + peerOpts
	}
	return []string{"-bgp-local-as", fmt.Sprint(NodeAS), "-bgp-router-id", n.Addr, "-bgp-peer", peer}
}

// Router is bird2 (or FRR: StartFRRRouter) running as the lab's router.
type Router struct {
	dir  string
	sock string
	cmds []*exec.Cmd
	frr  bool
	done chan struct{}
}

// StartRouter starts bird2 with a session to every node. ECMP hashes on
// ports too (fib_multipath_hash_policy 1), so one client's connections
// spread over the nodes.
func (l *Lab) StartRouter() (*Router, error) {
	if err := sh("sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, `router id %s;
protocol device { scan time 5; }
protocol kernel {
	ipv4 { import none; export all; };
	merge paths on;
}
filter gshut {
	if (65535, 0) ~ bgp_community then bgp_local_pref = 0;
	accept;
}
template bgp merlin {
	local %s as %d;
	passive on;
	hold time 9;
	error wait time 1, 10;  # retry soon after a failed session (default 60 s)
	graceful restart on;
	ipv4 { import filter gshut; export none; };
}
`, RouterIP, RouterIP, RouterAS)
	if l.RouterBFD {
		b.WriteString(`protocol bfd { interface "*" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }; }
`)
	}
	bfd := map[bool]string{true: " bfd on;"}[l.RouterBFD]
	for _, n := range l.Nodes {
		fmt.Fprintf(&b, "protocol bgp %s from merlin { neighbor %s as %d;%s }\n", n.Name, n.Addr, NodeAS, bfd)
	}
	return l.StartBird("bird", b.String())
}

// StartBird runs a bird2 of its own in the VM's root namespace with conf
// (files and log named after name): the lab's router, or another.
func (l *Lab) StartBird(name, conf string) (*Router, error) {
	r := &Router{dir: filepath.Join(l.Root, name)}
	r.sock = filepath.Join(r.dir, "bird.ctl")
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(r.dir, "bird.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(l.Root, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("bird", "-f", "-c", path, "-s", r.sock)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start bird: %w", err)
	}
	r.cmds = []*exec.Cmd{cmd}
	r.done = make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(r.done) }()
	return r, nil
}

// Stop ends the router; bird's routes go with it (FRR's zebra takes its
// own out at exit).
func (r *Router) Stop() {
	for _, c := range r.cmds {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		for _, c := range r.cmds {
			_ = c.Process.Kill()
		}
		<-r.done
	}
	if r.frr {
		os.RemoveAll(r.dir)
	}
}

// Birdc runs a bird CLI command.
func (r *Router) Birdc(args ...string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", r.sock}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// NextHops are the next hops of the router's kernel route to addr, sorted
// (none: no route).
func (r *Router) NextHops(addr string) ([]string, error) { return iproute.NextHops("", addr) }

// WaitNextHops waits until the kernel route to addr goes via exactly hops.
func (r *Router) WaitNextHops(addr string, timeout time.Duration, hops ...string) error {
	slices.Sort(hops)
	return Eventually(timeout, func() error {
		got, err := r.NextHops(addr)
		if err != nil {
			return err
		}
		if !slices.Equal(got, hops) {
			return fmt.Errorf("route to %s via %v, want %v", addr, got, hops)
		}
		return nil
	})
}

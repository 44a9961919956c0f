package lab

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// StartFRRRouter runs FRR (zebra, bgpd, bfdd) as the lab's router instead
// of bird2, with the README's router lines: multipath over the nodes, an
// inbound filter for the VIPs, an outbound deny-all, and BFD (300 ms × 3)
// with every node when RouterBFD is set.
func (l *Lab) StartFRRRouter() (*Router, error) {
	if err := sh("sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"); err != nil {
		return nil, err
	}
	// FRR's daemons run as the frr user: their directory sits beside the
	// lab's (which only root may enter), removed by Stop.
	dir, err := os.MkdirTemp(filepath.Dir(l.Root), "merlin-frr-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	r := &Router{dir: dir, frr: true, done: make(chan struct{})}
	u, err := user.Lookup("frr")
	if err != nil {
		return nil, fmt.Errorf("FRR's user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	conf := filepath.Join(r.dir, "frr.conf")
	if err := os.WriteFile(conf, []byte(l.frrConfig()), 0o644); err != nil {
		return nil, err
	}
	for _, p := range []string{r.dir, conf} {
		if err := os.Chown(p, uid, gid); err != nil {
			return nil, err
		}
	}
	log, err := os.Create(filepath.Join(l.Root, "frr.log"))
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Router, error) {
		for _, c := range r.cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
		out, _ := os.ReadFile(log.Name())
		log.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%w; FRR's log:\n%s", err, out)
	}
	for _, d := range []string{"zebra", "bgpd", "bfdd"} {
		args := []string{"-f", conf, "--vty_socket", r.dir, "-z", filepath.Join(r.dir, "zserv.api"), "-i", filepath.Join(r.dir, d+".pid"), "--log", "stdout"}
		if d == "bfdd" {
			args = append(args, "--bfdctl", filepath.Join(r.dir, "bfdd.sock"))
		}
		cmd := exec.Command("/usr/lib/frr/"+d, args...)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return fail(fmt.Errorf("start %s: %w", d, err))
		}
		r.cmds = append(r.cmds, cmd)
		if d == "zebra" {
			if err := Eventually(30*time.Second, func() error { _, err := os.Stat(filepath.Join(r.dir, "zserv.api")); return err }); err != nil {
				return fail(fmt.Errorf("zebra's socket: %w", err))
			}
		}
	}
	go func() {
		for _, c := range r.cmds {
			_ = c.Wait()
		}
		log.Close()
		close(r.done)
	}()
	return r, nil
}

func (l *Lab) frrConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, "frr defaults datacenter\nrouter bgp %d\n bgp router-id %s\n", RouterAS, RouterIP)
	for _, n := range l.Nodes {
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n neighbor %s passive\n neighbor %s timers 3 9\n neighbor %s timers connect 1\n", n.Addr, NodeAS, n.Addr, n.Addr, n.Addr)
		if l.RouterBFD {
			fmt.Fprintf(&b, " neighbor %s bfd\n neighbor %s bfd profile lab\n", n.Addr, n.Addr)
		}
	}
	b.WriteString(" address-family ipv4 unicast\n  maximum-paths 8\n")
	for _, n := range l.Nodes {
		fmt.Fprintf(&b, "  neighbor %s prefix-list MERLIN-VIPS in\n  neighbor %s route-map DENY-ALL out\n", n.Addr, n.Addr)
	}
	b.WriteString(" exit-address-family\n!\nip prefix-list MERLIN-VIPS seq 10 permit 198.18.0.0/15 ge 32\nroute-map DENY-ALL deny 10\n!\n")
	if l.RouterBFD {
		b.WriteString("bfd\n profile lab\n  receive-interval 300\n  transmit-interval 300\n  detect-multiplier 3\n !\n!\n")
	}
	return b.String()
}

// Vtysh runs one FRR command.
func (r *Router) Vtysh(cmd string) (string, error) {
	out, err := exec.Command("vtysh", "--vty_socket", r.dir, "-c", cmd).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("vtysh %s: %w: %s", cmd, err, out)
	}
	return string(out), nil
}

// DroppedByBFD reports whether the router took n's session down because
// BFD went down, with what it said.
func (r *Router) DroppedByBFD(n *Node) (bool, string, error) {
	if r.frr {
		out, err := r.Vtysh("show bgp neighbor " + n.Addr)
		return strings.Contains(out, "Cease/BFD Down"), out, err
	}
	out, err := r.Birdc("show", "protocols", "all", n.Name)
	return strings.Contains(out, "BFD session down"), out, err
}

// BFDUp reports whether the router's BFD session with n is up, as its BGP
// sees it.
func (r *Router) BFDUp(n *Node) (bool, error) {
	if r.frr {
		out, err := r.Vtysh("show bgp neighbor " + n.Addr)
		return strings.Contains(out, "Status: Up"), err
	}
	out, err := r.Birdc("show", "bfd", "sessions")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == n.Addr {
			return f[2] == "Up", err
		}
	}
	return false, err
}

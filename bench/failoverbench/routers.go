package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/merlin-ipvs/merlin/internal/netns"
)

// router is bird2 or FRR in the router's namespace.
type router interface {
	// bfdUp reports whether the router's BFD session with addr is up.
	bfdUp(addr string) bool
	stop()
}

func startRouter(kind string, ns *netns.NS, cfg config, dir string) (router, error) {
	switch kind {
	case "bird":
		return startBird(ns, cfg, dir)
	case "frr":
		return startFRR(ns, cfg, dir)
	}
	return nil, fmt.Errorf("-routers: no router %q (bird, frr)", kind)
}

type daemon struct{ cmds []*exec.Cmd }

func (d *daemon) start(ns *netns.NS, log string, name string, args ...string) error {
	f, err := os.Create(log)
	if err != nil {
		return err
	}
	cmd := ns.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	d.cmds = append(d.cmds, cmd)
	return nil
}

func (d *daemon) stop() {
	for i := len(d.cmds) - 1; i >= 0; i-- {
		_ = d.cmds[i].Process.Kill()
		_ = d.cmds[i].Wait()
	}
}

type bird struct {
	daemon
	ns   *netns.NS
	sock string
}

func startBird(ns *netns.NS, cfg config, dir string) (*bird, error) {
	b := &bird{ns: ns, sock: filepath.Join(dir, "bird.ctl")}
	var c strings.Builder
	fmt.Fprintf(&c, `router id %s;
protocol device { scan time 5; }
protocol kernel { ipv4 { import none; export all; }; merge paths on; }
`, routerAddr)
	bfd := ""
	if cfg.bfd > 0 {
		ms := cfg.bfd.Milliseconds()
		fmt.Fprintf(&c, "protocol bfd { interface \"*\" { min rx interval %d ms; min tx interval %d ms; multiplier 3; }; }\n", ms, ms)
		bfd = " bfd on;"
	}
	fmt.Fprintf(&c, `template bgp node {
	local %s as %d; passive on; hold time %d; error wait time 1, 2;%s
	ipv4 { import all; export none; };
}
`, routerAddr, routerAS, int(cfg.hold.Seconds()), bfd)
	for i, a := range nodeAddrs {
		fmt.Fprintf(&c, "protocol bgp node%d from node { neighbor %s as %d; }\n", i, a, nodeAS)
	}
	conf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(c.String()), 0o644); err != nil {
		return nil, err
	}
	return b, b.start(ns, filepath.Join(dir, "bird.log"), "bird", "-f", "-c", conf, "-s", b.sock)
}

func (b *bird) bfdUp(addr string) bool {
	out, _ := b.ns.Command("birdc", "-s", b.sock, "show", "bfd", "sessions").CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == addr {
			return f[2] == "Up"
		}
	}
	return false
}

type frr struct {
	daemon
	ns  *netns.NS
	dir string
}

func startFRR(ns *netns.NS, cfg config, dir string) (*frr, error) {
	f := &frr{ns: ns, dir: dir}
	u, err := user.Lookup("frr")
	if err != nil {
		return nil, fmt.Errorf("no frr user (Debian's frr not installed): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	var c strings.Builder
	fmt.Fprintf(&c, "frr defaults datacenter\nrouter bgp %d\n bgp router-id %s\n no bgp ebgp-requires-policy\n", routerAS, routerAddr)
	hold := int(cfg.hold.Seconds())
	for _, a := range nodeAddrs {
		fmt.Fprintf(&c, " neighbor %s remote-as %d\n neighbor %s passive\n neighbor %s timers %d %d\n neighbor %s timers connect 1\n", a, nodeAS, a, a, max(hold/3, 1), hold, a)
		if cfg.bfd > 0 {
			fmt.Fprintf(&c, " neighbor %s bfd\n neighbor %s bfd profile bench\n", a, a)
		}
	}
	c.WriteString(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n")
	if cfg.bfd > 0 {
		ms := cfg.bfd.Milliseconds()
		fmt.Fprintf(&c, "bfd\n profile bench\n  receive-interval %d\n  transmit-interval %d\n  detect-multiplier 3\n !\n!\n", ms, ms)
	}
	conf := filepath.Join(dir, "frr.conf")
	if err := os.WriteFile(conf, []byte(c.String()), 0o644); err != nil {
		return nil, err
	}
	for _, p := range []string{dir, conf} {
		if err := os.Chown(p, uid, gid); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	for _, d := range []string{"zebra", "bgpd", "bfdd"} {
		args := []string{"-f", conf, "--vty_socket", dir, "-z", filepath.Join(dir, "zserv.api"), "-i", filepath.Join(dir, d+".pid"), "--log", "stdout"}
		if d == "bfdd" {
			args = append(args, "--bfdctl", filepath.Join(dir, "bfdd.sock"))
		}
		if err := f.start(ns, filepath.Join(dir, d+".log"), "/usr/lib/frr/"+d, args...); err != nil {
			f.stop()
			return nil, err
		}
		if d == "zebra" {
			if err := waitFor(10*time.Second, func() bool { _, err := os.Stat(filepath.Join(dir, "zserv.api")); return err == nil }); err != nil {
				f.stop()
				return nil, fmt.Errorf("zebra's socket: %w", err)
			}
		}
	}
	return f, nil
}

func (f *frr) bfdUp(addr string) bool {
	out, _ := f.ns.Command("vtysh", "--vty_socket", f.dir, "-c", "show bfd peer "+addr).CombinedOutput()
	return strings.Contains(string(out), "Status: up")
}

// waitFor polls cond every 10 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

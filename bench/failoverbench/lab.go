package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/merlin-ipvs/merlin/internal/netns"
)

const (
	routerAddr = "198.18.8.1"
	vip        = "198.18.9.1"
	routerAS   = 65000
	nodeAS     = 65001
)

var nodeAddrs = []string{"198.18.8.11", "198.18.8.12"}

// lab is the router's namespace with a bridge, and two node namespaces
// on it, each with the VIP on its loopback and its speaker running.
type lab struct {
	router   *netns.NS
	nodes    []*netns.NS
	speakers []*exec.Cmd
}

func ip(ns *netns.NS, args ...string) error {
	out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s %s: %w: %s", ns.Name, strings.Join(args, " "), err, out)
	}
	return nil
}

func newLab() (l *lab, err error) {
	l = &lab{}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	if l.router, err = netns.New("mfo-r-"); err != nil {
		return nil, err
	}
	steps := [][]string{{"link", "add", "br0", "type", "bridge"}, {"addr", "add", routerAddr + "/24", "dev", "br0"}, {"link", "set", "br0", "up"}}
	for _, s := range steps {
		if err := ip(l.router, s...); err != nil {
			return nil, err
		}
	}
	// ECMP on ports too, so one client's connections spread over the nodes.
	if out, err := l.router.Command("sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("sysctl: %w: %s", err, out)
	}
	for i, addr := range nodeAddrs {
		ns, err := netns.New("mfo-n-")
		if err != nil {
			return nil, err
		}
		l.nodes = append(l.nodes, ns)
		port := fmt.Sprintf("port%d", i)
		if err := ip(l.router, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.Name); err != nil {
			return nil, err
		}
		for _, s := range [][]string{{"link", "set", port, "master", "br0", "up"}} {
			if err := ip(l.router, s...); err != nil {
				return nil, err
			}
		}
		for _, s := range [][]string{{"addr", "add", addr + "/24", "dev", "eth0"}, {"link", "set", "eth0", "up"}, {"addr", "add", vip + "/32", "dev", "lo"}} {
			if err := ip(ns, s...); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}

// startSpeakers runs this program as each node's speaker in its namespace.
func (l *lab) startSpeakers(cfg config, logDir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for i, ns := range l.nodes {
		args := []string{"-speaker", "--", "-addr", nodeAddrs[i], "-hold", cfg.hold.String(), "-bfd", cfg.bfd.String()}
		cmd := ns.Command(self, args...)
		log, err := os.Create(fmt.Sprintf("%s/speaker%d.log", logDir, i))
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start speaker %d: %w", i, err)
		}
		l.speakers = append(l.speakers, cmd)
	}
	return nil
}

func (l *lab) close() {
	for _, c := range l.speakers {
		_ = c.Process.Signal(os.Interrupt)
		_ = c.Wait()
	}
	for _, ns := range l.nodes {
		ns.Delete()
	}
	if l.router != nil {
		l.router.Delete()
	}
}

// Package testrouter runs real routers for tests: Debian's bird2, FRR
// (zebra, bgpd, bfdd) and gobgpd, each in a network namespace of its own
// reached from the test over a veth pair. Needs root; a missing router
// skips the test (or fails it where the environment promises routers).
package testrouter

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// Link makes a namespace reached from here at nsAddr over a veth whose
// near end, named link, has hostAddr (both /30).
func Link(t *testing.T, link, hostAddr, nsAddr string) *testenv.NetNS {
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

// Look finds a router program or skips.
func Look(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		testenv.Missing(t, testenv.PeersPromised(), "%s not installed (Debian's bird2 / frr / gobgpd)", name)
	}
	return path
}

// Daemon runs a program in ns (in the foreground) until the test ends; its
// output is logged if the test failed.
func Daemon(t *testing.T, ns *testenv.NetNS, name string, args ...string) {
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

// Pair makes two namespaces joined by a veth (eth0 in each) with aAddr
// and bAddr (/30).
func Pair(t *testing.T, aAddr, bAddr string) (a, b *testenv.NetNS) {
	t.Helper()
	a, b = testenv.NewNetNS(t), testenv.NewNetNS(t)
	if out, err := exec.Command("ip", "link", "add", "eth0", "netns", a.Name, "type", "veth", "peer", "name", "eth0", "netns", b.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	for _, e := range []struct {
		ns   *testenv.NetNS
		addr string
	}{{a, aAddr}, {b, bAddr}} {
		e.ns.Run(t, "ip", "addr", "add", e.addr+"/30", "dev", "eth0")
		e.ns.Run(t, "ip", "link", "set", "eth0", "up")
	}
	return a, b
}

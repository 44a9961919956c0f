package testrouter

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// FRR is FRR's daemons (zebra and those asked for) running in a namespace,
// with their sockets in a directory of the test's.
type FRR struct {
	ns    *testenv.NetNS
	dir   string
	vtysh string
}

// StartFRR runs zebra and daemons (e.g. "bgpd", "bfdd") with the
// integrated configuration conf until the test ends. The daemons run as
// FRR's own user, as Debian's package runs them.
func StartFRR(t *testing.T, ns *testenv.NetNS, conf string, daemons ...string) *FRR {
	t.Helper()
	f := &FRR{ns: ns, vtysh: Look(t, "vtysh")}
	u, err := user.Lookup("frr")
	if err != nil {
		testenv.Missing(t, testenv.PeersPromised(), "no frr user (Debian's frr not installed)")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	f.dir, err = os.MkdirTemp("", "merlin-frr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(f.dir) })
	path := filepath.Join(f.dir, "frr.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f.dir, path} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]string{"zebra"}, daemons...) {
		bin := "/usr/lib/frr/" + d
		if _, err := os.Stat(bin); err != nil {
			testenv.Missing(t, testenv.PeersPromised(), "%s not installed (Debian's frr)", bin)
		}
		args := []string{"-f", path, "--vty_socket", f.dir, "-z", filepath.Join(f.dir, "zserv.api"),
			"-i", filepath.Join(f.dir, d+".pid"), "--log", "stdout", "--log-level", "info"}
		if d == "bfdd" {
			args = append(args, "--bfdctl", filepath.Join(f.dir, "bfdd.sock"))
		}
		Daemon(t, ns, bin, args...)
		if d == "zebra" { // the others connect to it at start
			testenv.Eventually(t, "zebra's socket", func() bool {
				_, err := os.Stat(filepath.Join(f.dir, "zserv.api"))
				return err == nil
			})
		}
	}
	testenv.Eventually(t, "FRR's daemons to answer", func() bool {
		_, err := f.ns.Command(f.vtysh, "--vty_socket", f.dir, "-c", "show version").CombinedOutput()
		return err == nil
	})
	return f
}

// Vtysh runs one vtysh command and returns its output (errors included).
func (f *FRR) Vtysh(cmd string) string {
	c := f.ns.Command(f.vtysh, "--vty_socket", f.dir, "-c", cmd)
	c.WaitDelay = 5 * time.Second
	out, _ := c.CombinedOutput()
	return string(out)
}

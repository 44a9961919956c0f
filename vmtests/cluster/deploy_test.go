package cluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/netns"
	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// machine is one of the guide's machines on the test VM: a network
// namespace (the lab's, or the root one) and a mount namespace of its own
// in which the directories a real machine would not share are private.
type machine struct {
	name string
	pid  int // holds the namespaces: every step enters them
	dirs string
	cmd  *exec.Cmd
}

// guide runs docs/deploying.md's steps as written, on the test VM.
type guide struct {
	t        *testing.T
	lab      *lab.Lab
	steps    map[string]string
	admin    string // the directory every step runs in (pki/, binaries)
	shims    string // stand-ins for systemctl and apt-get
	env      []string
	machines []*machine
}

var stepMark = regexp.MustCompile("(?s)<!-- step: ([a-z-]+) -->\n```sh\n(.*?)```")

func guideSteps(t *testing.T) map[string]string {
	raw, err := os.ReadFile("../../docs/deploying.md")
	if err != nil {
		t.Fatal(err)
	}
	steps := map[string]string{}
	for _, m := range stepMark.FindAllSubmatch(raw, -1) {
		steps[string(m[1])] = string(m[2])
	}
	return steps
}

// newMachine starts the process that holds a machine's namespaces; dirs
// are made private to it (empty at first).
func (g *guide) newMachine(name string, ns *netns.NS, dirs ...string) *machine {
	m := &machine{name: name, dirs: filepath.Join(g.lab.Root, "machines", name)}
	script := "set -e\n"
	for _, d := range dirs {
		src := filepath.Join(m.dirs, strings.ReplaceAll(strings.Trim(d, "/"), "/", "_"))
		g.must(os.MkdirAll(src, 0o755))
		script += fmt.Sprintf("mkdir -p %s\nmount --bind %s %s\n", d, src, d)
	}
	script += "echo ready\nexec sleep 100000\n"
	args := []string{"unshare", "-m", "--propagation", "private", "sh", "-c", script}
	if ns != nil {
		m.cmd = ns.Command(args[0], args[1:]...)
	} else {
		m.cmd = exec.Command(args[0], args[1:]...)
	}
	out, err := m.cmd.StdoutPipe()
	g.must(err)
	m.cmd.Stderr = os.Stderr
	g.must(m.cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		g.t.Fatalf("machine %s: %q %v", name, line, err)
	}
	m.pid = m.cmd.Process.Pid
	g.machines = append(g.machines, m)
	return m
}

func (g *guide) must(err error) {
	g.t.Helper()
	if err != nil {
		g.t.Fatal(err)
	}
}

// run runs a step of the guide (or, with name "", a script of the test's
// own) on a machine (nil: the administrator's, in the root namespaces).
func (g *guide) run(m *machine, name, script string, env ...string) (string, error) {
	g.t.Helper()
	if name != "" {
		var ok bool
		if script, ok = g.steps[name]; !ok {
			g.t.Fatalf("docs/deploying.md has no step %q", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	argv := []string{"bash", "-euo", "pipefail", "-c", "cd " + g.admin + "\n" + script}
	if m != nil {
		argv = append([]string{"nsenter", "-t", strconv.Itoa(m.pid), "-m", "-n", "-r", "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(append(os.Environ(), "PATH="+g.shims+":/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), g.env...), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("step %q: %w\n%s", name, err, out.String())
	}
	return out.String(), err
}

func (g *guide) step(m *machine, name string, env ...string) string {
	g.t.Helper()
	out, err := g.run(m, name, "", env...)
	g.must(err)
	return out
}

func (g *guide) eventually(what string, fn func() error) {
	g.t.Helper()
	if err := lab.Eventually(2*time.Minute, fn); err != nil {
		g.t.Fatalf("%s: %v", what, err)
	}
}

// logs: the machines' service logs, for a failed test.
func (g *guide) logs() {
	for _, m := range g.machines {
		for _, unit := range []string{"etcd", "merlin"} {
			if b, err := os.ReadFile(filepath.Join(m.dirs, "run_guide", unit+".log")); err == nil {
				lines := strings.Split(string(b), "\n")
				g.t.Logf("%s %s log (tail):\n%s", m.name, unit, strings.Join(lines[max(0, len(lines)-40):], "\n"))
			}
		}
	}
}

// stop ends every service a step started and the machines.
func (g *guide) stop() {
	for _, m := range g.machines {
		for _, unit := range []string{"merlin", "etcd"} {
			if b, err := os.ReadFile(filepath.Join(m.dirs, "run_guide", unit+".pid")); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		_ = m.cmd.Process.Kill()
		_ = m.cmd.Wait()
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// TestVMDeployGuide follows docs/deploying.md on the test VM: a three-member
// etcd over TLS with client certificates, two merlin nodes configured and
// started as the guide says, operators with roles, traffic through the
// VIP, a rolling upgrade without a failed connection, and both kinds of
// backup restored.
func TestVMDeployGuide(t *testing.T) {
	if !testenv.InVM() {
		testenv.Missing(t, false, "the deploying guide's test needs the VM kernel (IPVS); run it through make vmtest")
	}
	testenv.RequireRoot(t)
	bin := binDir(t)
	l, err := lab.New(lab.Config{Bin: bin, Nodes: 2, TopologyOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	g := &guide{t: t, lab: l, steps: guideSteps(t), admin: filepath.Join(l.Root, "admin"), shims: filepath.Join(wd, "testdata", "guide")}
	t.Cleanup(func() {
		if t.Failed() {
			g.logs()
		}
		g.stop()
		l.Close()
		l.RemoveScratch()
	})
	g.must(os.MkdirAll(g.admin, 0o700))
	copyFile(t, filepath.Join(bin, "meradm"), filepath.Join(g.admin, "meradm"), 0o755)
	// The package (scripts/vmdebs.sh builds both), one version at a time in
	// the directory as the guide says; man-db's trigger would take minutes
	// under emulation after each dpkg -i.
	placeDeb := func(version string) {
		old, _ := filepath.Glob(filepath.Join(g.admin, "merlin_*_amd64.deb"))
		for _, f := range old {
			g.must(os.Remove(f))
		}
		name := "merlin_" + version + "-1_amd64.deb"
		copyFile(t, filepath.Join("../../build", name), filepath.Join(g.admin, name), 0o644)
	}
	placeDeb("1.2.3")
	_ = os.Remove("/var/lib/man-db/auto-update")
	etcdIP := func(i int) string { return fmt.Sprintf("198.18.0.%d", 30+i) }
	g.env = []string{"ETCD1_IP=" + etcdIP(1), "ETCD2_IP=" + etcdIP(2), "ETCD3_IP=" + etcdIP(3),
		"NODE1_IP=" + l.Nodes[0].Addr, "NODE2_IP=" + l.Nodes[1].Addr, "NODE3_IP=198.18.0.13"}

	// 1–2: certificates, then etcd on three members.
	g.step(nil, "pki")
	var members []*machine
	for i := 1; i <= 3; i++ {
		ns, err := l.AddMachine("etcd-", etcdIP(i))
		g.must(err)
		m := g.newMachine(fmt.Sprintf("etcd%d", i), ns, "/etc/etcd", "/etc/default", "/var/lib/etcd", "/run/guide")
		g.step(m, "etcd", fmt.Sprintf("N=%d", i), "IP="+etcdIP(i))
		members = append(members, m)
	}
	g.eventually("etcd members healthy", func() error { _, err := g.run(nil, "etcd-check", ""); return err })

	// 3: merlin on each node, then the operator's view of both.
	var nodes []*machine
	for i, n := range l.Nodes {
		// One filesystem for both nodes: /usr and dpkg's database are
		// shared (the second install is a reinstall), configuration and
		// state are each node's.
		m := g.newMachine(n.Name, n.NS, "/etc/merlin", "/var/lib/merlin", "/etc/systemd/system", "/run/guide")
		g.step(m, "node", fmt.Sprintf("N=%d", i+1), "IP="+n.Addr)
		nodes = append(nodes, m)
	}
	for _, n := range l.Nodes {
		g.must(l.WaitReady(n))
	}
	g.eventually("both nodes in meradm status", func() error {
		out, err := g.run(nil, "operator", "")
		if err == nil && (!strings.Contains(out, "node1 ") || !strings.Contains(out, "node2 ")) {
			err = fmt.Errorf("status:\n%s", out)
		}
		return err
	})

	// Services through the guide's operator set-up; traffic over the VIP.
	ops := func(script string) string {
		t.Helper()
		out, err := g.run(nil, "", ". ./meradm.env\n"+script)
		g.must(err)
		return out
	}
	ops(fmt.Sprintf("meradm service add web tcp %s:80 -s rr\nfor b in %s %s %s; do meradm server add web $b:8080 -f nat; done",
		lab.NATVIP, lab.BackendAddr(0), lab.BackendAddr(1), lab.BackendAddr(2)))
	tally := func() {
		t.Helper()
		g.eventually("connections spread over the three backends", func() error {
			got, err := l.Tally(lab.NATVIP+":80", 9)
			if err == nil && (got["backend1"] != 3 || got["backend2"] != 3 || got["backend3"] != 3) {
				err = fmt.Errorf("spread %v", got)
			}
			return err
		})
	}
	tally()
	// The dashboard's certificate reads and may not write.
	reader := "export MERLIN_TLS_CERT=$PWD/pki/grafana-bot.pem MERLIN_TLS_KEY=$PWD/pki/grafana-bot-key.pem\n"
	if out := ops(reader + "meradm list"); !strings.Contains(out, lab.BackendAddr(2)+":8080") {
		t.Fatalf("grafana-bot's list:\n%s", out)
	}
	if out, err := g.run(nil, "", ". ./meradm.env\n"+reader+"meradm service add db tcp 198.19.0.30:5432"); err == nil || !strings.Contains(out, "needs the writer role") {
		t.Fatalf("grafana-bot wrote: %v\n%s", err, out)
	}

	// 5: a rolling upgrade of node1, which carries the NAT VIP: not one
	// connection fails, and the kernel table is as it was.
	before := c(t, l).table(l.Nodes[0])
	traffic := l.StartTraffic(lab.NATVIP + ":80")
	g.step(nil, "upgrade-drain", "N=1", "OTHER_IP="+l.Nodes[1].Addr)
	placeDeb("1.2.4")
	g.step(nodes[0], "upgrade-node", "N=1", "IP="+l.Nodes[0].Addr)
	out := g.step(nil, "upgrade-undrain", "N=1", "OTHER_IP="+l.Nodes[1].Addr)
	if !strings.Contains(out, "node1: runs merlin v1.2.4") || !strings.Contains(out, "node2: runs merlin v1.2.3") {
		t.Errorf("meradm status after node1's upgrade does not show both versions:\n%s", out)
	}
	if okN, fail, last := traffic.Finish(); fail != 0 || okN == 0 {
		t.Fatalf("during the upgrade: %d connections worked, %d failed (%v)\n%s", okN, fail, last, out)
	}
	if after := c(t, l).table(l.Nodes[0]); after != before {
		t.Fatalf("node1's table changed across the upgrade:\n%s\n---\n%s", before, after)
	}

	// 6: backups. merlin's export restores deleted services.
	g.step(nil, "backup")
	ops("meradm service del web")
	g.eventually("web gone from node1", func() error {
		if tb := c(t, l).table(l.Nodes[0]); strings.Contains(tb, lab.NATVIP) {
			return fmt.Errorf("table:\n%s", tb)
		}
		return nil
	})
	g.step(nil, "restore-services")
	tally()

	// A service added after the snapshot is gone once etcd is restored
	// from it; the nodes follow without a restart.
	ops("meradm service add extra tcp 198.19.0.40:80 -s rr")
	g.eventually("extra on node1", func() error {
		if tb := c(t, l).table(l.Nodes[0]); !strings.Contains(tb, "198.19.0.40") {
			return fmt.Errorf("table:\n%s", tb)
		}
		return nil
	})
	for _, m := range members { // "stop all three"
		_, err := g.run(m, "", "systemctl stop etcd")
		g.must(err)
	}
	for i, m := range members {
		g.step(m, "restore-etcd", fmt.Sprintf("N=%d", i+1), "IP="+etcdIP(i+1))
	}
	g.eventually("etcd restored: extra gone from both nodes, web still served", func() error {
		for _, n := range l.Nodes {
			tb := c(t, l).table(n)
			if strings.Contains(tb, "198.19.0.40") || !strings.Contains(tb, lab.NATVIP) {
				return fmt.Errorf("%s's table:\n%s", n.Name, tb)
			}
		}
		return nil
	})
	tally()
	if out := ops("meradm export"); strings.Contains(out, "extra") || !strings.Contains(out, "web") {
		t.Fatalf("export after the restore:\n%s", out)
	}
}

// c wraps the lab for the table helpers of the other cluster tests.
func c(t *testing.T, l *lab.Lab) *cluster { return &cluster{t: t, Lab: l} }

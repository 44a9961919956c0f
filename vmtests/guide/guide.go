// Package guide runs docs/deploying.md's steps as written, for the VM
// tests that follow the guide (vmtests/cluster on the lab's machines,
// vmtests/systemd under a real systemd). Each of the guide's machines is a
// network namespace and a mount namespace of its own in which the
// directories a real machine would not share are private; steps on them
// use stand-ins for systemctl and apt-get (shims/), except on the host
// machine, which is the VM's own (its real systemd). Needs root in the VM.
package guide

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
	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

// Machine is one of the guide's machines on the test VM.
type Machine struct {
	Name string
	pid  int // holds the namespaces: every step enters them
	dirs string
	cmd  *exec.Cmd
	real bool // the VM itself: its own systemctl, no stand-ins
}

// Guide holds the guide's steps and the machines they run on.
type Guide struct {
	t        *testing.T
	root     string
	steps    map[string]string
	Admin    string   // the directory every step runs in (pki/, packages)
	Env      []string // the guide's variables (ETCD1_IP, …)
	shims    string
	machines []*Machine
}

var stepMark = regexp.MustCompile("(?s)<!-- step: ([a-z-]+) -->\n```sh\n(.*?)```")

// New reads doc's steps; root is a scratch directory (the machines'
// private directories and the admin directory go there); shims holds the
// stand-ins.
func New(t *testing.T, doc, root, shims string) *Guide {
	raw, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	g := &Guide{t: t, root: root, steps: map[string]string{}, Admin: filepath.Join(root, "admin"), shims: shims}
	for _, m := range stepMark.FindAllSubmatch(raw, -1) {
		g.steps[string(m[1])] = string(m[2])
	}
	g.Must(os.MkdirAll(g.Admin, 0o700))
	return g
}

// NewMachine starts the process that holds a machine's namespaces (ns nil:
// the root network namespace); dirs are made private to it (empty at
// first).
func (g *Guide) NewMachine(name string, ns *netns.NS, dirs ...string) *Machine {
	m := &Machine{Name: name, dirs: filepath.Join(g.root, "machines", name)}
	script := "set -e\n"
	for _, d := range dirs {
		src := filepath.Join(m.dirs, strings.ReplaceAll(strings.Trim(d, "/"), "/", "_"))
		g.Must(os.MkdirAll(src, 0o755))
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
	g.Must(err)
	m.cmd.Stderr = os.Stderr
	g.Must(m.cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		g.t.Fatalf("machine %s: %q %v", name, line, err)
	}
	m.pid = m.cmd.Process.Pid
	g.machines = append(g.machines, m)
	return m
}

// Host is the VM itself as one of the guide's machines: its namespaces,
// its filesystem and its systemd.
func (g *Guide) Host(name string) *Machine { return &Machine{Name: name, pid: 1, real: true} }

// Must fails the test on an error.
func (g *Guide) Must(err error) {
	g.t.Helper()
	if err != nil {
		g.t.Fatal(err)
	}
}

// Run runs a step of the guide (or, with name "", a script of the test's
// own) on a machine (nil: the administrator's, in the root namespaces).
func (g *Guide) Run(m *Machine, name, script string, env ...string) (string, error) {
	g.t.Helper()
	if name != "" {
		var ok bool
		if script, ok = g.steps[name]; !ok {
			g.t.Fatalf("the guide has no step %q", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	argv := []string{"bash", "-euo", "pipefail", "-c", "cd " + g.Admin + "\n" + script}
	if m != nil && !m.real {
		argv = append([]string{"nsenter", "-t", strconv.Itoa(m.pid), "-m", "-n", "-r", "--"}, argv...)
	}
	path := "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if m == nil || !m.real {
		path = g.shims + ":" + path
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(append(os.Environ(), "PATH="+path), g.Env...), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("step %q: %w\n%s", name, err, out.String())
	}
	return out.String(), err
}

// Step runs a step of the guide and fails the test if it fails.
func (g *Guide) Step(m *Machine, name string, env ...string) string {
	g.t.Helper()
	out, err := g.Run(m, name, "", env...)
	g.Must(err)
	return out
}

// Eventually retries fn for up to two minutes.
func (g *Guide) Eventually(what string, fn func() error) {
	g.t.Helper()
	if err := lab.Eventually(2*time.Minute, fn); err != nil {
		g.t.Fatalf("%s: %v", what, err)
	}
}

// Logs logs the stand-in services' logs, for a failed test.
func (g *Guide) Logs() {
	for _, m := range g.machines {
		for _, unit := range []string{"etcd", "merlin"} {
			if b, err := os.ReadFile(filepath.Join(m.dirs, "run_guide", unit+".log")); err == nil {
				lines := strings.Split(string(b), "\n")
				g.t.Logf("%s %s log (tail):\n%s", m.Name, unit, strings.Join(lines[max(0, len(lines)-40):], "\n"))
			}
		}
	}
}

// Stop ends every service a stand-in started and the machines.
func (g *Guide) Stop() {
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

// CopyFile copies src to dst with mode.
func CopyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// PlaceDeb leaves build/merlin_VERSION-1_amd64.deb (scripts/vmdebs.sh
// builds it) alone in the admin directory, as the guide asks: one version
// at a time.
func (g *Guide) PlaceDeb(buildDir, version string) {
	g.t.Helper()
	old, _ := filepath.Glob(filepath.Join(g.Admin, "merlin_*_amd64.deb"))
	for _, f := range old {
		g.Must(os.Remove(f))
	}
	name := "merlin_" + version + "-1_amd64.deb"
	CopyFile(g.t, filepath.Join(buildDir, name), filepath.Join(g.Admin, name), 0o644)
}

// Shims is the stand-ins' directory, for a test in a sibling of this
// package (vmtests/cluster, vmtests/systemd: the test's working directory).
func Shims() string {
	wd, _ := os.Getwd()
	return filepath.Join(filepath.Dir(wd), "guide", "shims")
}

// NoManDBTrigger turns off man-db's index rebuild after each dpkg -i (on
// the host's root in the VM): minutes under emulation, nothing a test
// looks at; the guest's root is a throw-away overlay.
func NoManDBTrigger() { _ = os.Remove("/var/lib/man-db/auto-update") }

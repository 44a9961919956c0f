package systemd

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/netns"
	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/vmtests/guide"
)

// TestVMDeployGuideUnderSystemd follows docs/deploying.md with the merlin
// node being the VM itself, under its real systemd: the certificates, three
// etcd members over TLS (machines of their own, with the systemctl
// stand-in: one systemd cannot be three machines), the node step as
// written (dpkg -i of the package, the configuration, `systemctl enable
// --now merlin`), the operator's meradm over mutual TLS, a service in the
// kernel, and the upgrade step (dpkg -i of the newer package, systemctl
// restart, readyz) with the new version in meradm status and the table
// unchanged.
func TestVMDeployGuideUnderSystemd(t *testing.T) {
	if !testenv.InVM() {
		testenv.Missing(t, false, "needs the VM with systemd (make vmtest)")
	}
	t.Cleanup(journalOnFailure(t))
	const nodeIP = "198.18.4.1"
	etcdIP := func(i int) string { return fmt.Sprintf("198.18.4.%d", 30+i) }
	run(t, "ip", "link", "add", "gbr0", "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "gbr0").Run() })
	run(t, "ip", "addr", "add", nodeIP+"/24", "dev", "gbr0")
	run(t, "ip", "link", "set", "gbr0", "up")

	// Not under /tmp, which the guest's systemd-tmpfiles empties at boot.
	scratch, err := os.MkdirTemp("/var/tmp", "guide-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(scratch) })
	g := guide.New(t, "../../docs/deploying.md", scratch, guide.Shims())
	t.Cleanup(func() {
		if t.Failed() {
			g.Logs()
		}
		_ = exec.Command("dpkg", "--purge", "merlin").Run()
		g.Stop()
		_ = exec.Command("ipvsadm", "-C").Run()
		_ = exec.Command("ip", "link", "del", "merlin0").Run()
		_ = os.Remove("/usr/local/bin/meradm")
	})
	g.PlaceDeb("../../build", "1.2.3")
	g.Env = []string{"ETCD1_IP=" + etcdIP(1), "ETCD2_IP=" + etcdIP(2), "ETCD3_IP=" + etcdIP(3),
		"NODE1_IP=" + nodeIP, "NODE2_IP=198.18.4.12", "NODE3_IP=198.18.4.13"}

	g.Step(nil, "pki")
	for i := 1; i <= 3; i++ {
		ns := guideMachineNet(t, etcdIP(i), nodeIP)
		m := g.NewMachine(fmt.Sprintf("etcd%d", i), ns, "/etc/etcd", "/etc/default", "/var/lib/etcd", "/run/guide")
		g.Step(m, "etcd", fmt.Sprintf("N=%d", i), "IP="+etcdIP(i))
	}
	g.Eventually("etcd members healthy", func() error { _, err := g.Run(nil, "etcd-check", ""); return err })

	node := g.Host("node1")
	g.Step(node, "node", "N=1", "IP="+nodeIP)
	if st := strings.TrimSpace(output(t, "systemctl", "is-active", "merlin")); st != "active" {
		t.Fatalf("merlin is %s after the guide's node step", st)
	}
	// The operator's machine takes meradm from the package (its step
	// installs the binary from the directory).
	guide.CopyFile(t, "/usr/bin/meradm", filepath.Join(g.Admin, "meradm"), 0o755)
	g.Eventually("node1 in the operator's meradm status", func() error {
		out, err := g.Run(nil, "operator", "")
		if err == nil && !strings.Contains(out, "node1 ") {
			err = fmt.Errorf("status:\n%s", out)
		}
		return err
	})
	ops := func(script string) string {
		t.Helper()
		out, err := g.Run(nil, "", ". ./meradm.env\n"+script)
		g.Must(err)
		return out
	}
	ops("meradm service add web tcp 198.19.4.10:80 -s rr\nmeradm server add web 198.18.4.21:8080 -f nat")
	eventually(t, "the guide's service in the kernel", func() error {
		if tb := table(t); !strings.Contains(tb, "198.18.4.21:8080") {
			return fmt.Errorf("table:\n%s", tb)
		}
		return nil
	})
	before := table(t)

	g.PlaceDeb("../../build", "1.2.4")
	g.Step(node, "upgrade-node", "N=1", "IP="+nodeIP)
	g.Eventually("node1 on v1.2.4 in meradm status", func() error {
		if out := ops("meradm status"); !strings.Contains(out, "v1.2.4") {
			return fmt.Errorf("status:\n%s", out)
		}
		return nil
	})
	if after := table(t); after != before {
		t.Errorf("the kernel table changed across the guide's upgrade:\n%s\n---\n%s", before, after)
	}
	if j := output(t, "journalctl", "-u", "merlin", "--no-pager"); !strings.Contains(j, `msg="API listening" address=`+nodeIP+":4282") || !strings.Contains(j, "mutual_tls=true") {
		t.Errorf("merlin's journal has no API on %s with mutual TLS:\n%s", nodeIP, j)
	}
}

// guideMachineNet is a namespace on gbr0 with addr, routing through gw.
func guideMachineNet(t *testing.T, addr, gw string) *netns.NS {
	ns, err := netns.New("guide-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Delete() })
	host := "g" + ns.Name[len(ns.Name)-6:]
	run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
	run(t, "ip", "link", "set", host, "master", "gbr0", "up")
	for _, c := range [][]string{{"ip", "addr", "add", addr + "/24", "dev", "eth0"}, {"ip", "link", "set", "eth0", "up"}, {"ip", "route", "add", "default", "via", gw}} {
		if out, err := ns.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s in %s: %v: %s", strings.Join(c, " "), ns.Name, err, out)
		}
	}
	return ns
}

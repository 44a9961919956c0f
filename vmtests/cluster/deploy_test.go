package cluster

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/vmtests/guide"
	"github.com/merlin-ipvs/merlin/vmtests/lab"
)

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
	g := guide.New(t, "../../docs/deploying.md", l.Root, guide.Shims())
	t.Cleanup(func() {
		if t.Failed() {
			g.Logs()
		}
		g.Stop()
		l.Close()
		l.RemoveScratch()
	})
	guide.CopyFile(t, filepath.Join(bin, "meradm"), filepath.Join(g.Admin, "meradm"), 0o755)
	// The package (scripts/vmdebs.sh builds both); man-db's trigger would
	// take minutes under emulation after each dpkg -i.
	g.PlaceDeb("../../build", "1.2.3")
	guide.NoManDBTrigger()
	etcdIP := func(i int) string { return fmt.Sprintf("198.18.0.%d", 30+i) }
	g.Env = []string{"ETCD1_IP=" + etcdIP(1), "ETCD2_IP=" + etcdIP(2), "ETCD3_IP=" + etcdIP(3),
		"NODE1_IP=" + l.Nodes[0].Addr, "NODE2_IP=" + l.Nodes[1].Addr, "NODE3_IP=198.18.0.13"}

	// 1–2: certificates, then etcd on three members.
	g.Step(nil, "pki")
	var members []*guide.Machine
	for i := 1; i <= 3; i++ {
		ns, err := l.AddMachine("etcd-", etcdIP(i))
		g.Must(err)
		m := g.NewMachine(fmt.Sprintf("etcd%d", i), ns, "/etc/etcd", "/etc/default", "/var/lib/etcd", "/run/guide")
		g.Step(m, "etcd", fmt.Sprintf("N=%d", i), "IP="+etcdIP(i))
		members = append(members, m)
	}
	g.Eventually("etcd members healthy", func() error { _, err := g.Run(nil, "etcd-check", ""); return err })

	// 3: merlin on each node, then the operator's view of both.
	var nodes []*guide.Machine
	for i, n := range l.Nodes {
		// One filesystem for both nodes: /usr and dpkg's database are
		// shared (the second install is a reinstall), configuration and
		// state are each node's.
		m := g.NewMachine(n.Name, n.NS, "/etc/merlin", "/var/lib/merlin", "/etc/systemd/system", "/run/guide")
		g.Step(m, "node", fmt.Sprintf("N=%d", i+1), "IP="+n.Addr)
		nodes = append(nodes, m)
	}
	for _, n := range l.Nodes {
		g.Must(l.WaitReady(n))
	}
	g.Eventually("both nodes in meradm status", func() error {
		out, err := g.Run(nil, "operator", "")
		if err == nil && (!strings.Contains(out, "node1 ") || !strings.Contains(out, "node2 ")) {
			err = fmt.Errorf("status:\n%s", out)
		}
		return err
	})

	// Services through the guide's operator set-up; traffic over the VIP.
	ops := func(script string) string {
		t.Helper()
		out, err := g.Run(nil, "", ". ./meradm.env\n"+script)
		g.Must(err)
		return out
	}
	ops(fmt.Sprintf("meradm service add web tcp %s:80 -s rr\nfor b in %s %s %s; do meradm server add web $b:8080 -f nat; done",
		lab.NATVIP, lab.BackendAddr(0), lab.BackendAddr(1), lab.BackendAddr(2)))
	tally := func() {
		t.Helper()
		g.Eventually("connections spread over the three backends", func() error {
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
	if out, err := g.Run(nil, "", ". ./meradm.env\n"+reader+"meradm service add db tcp 198.19.0.30:5432"); err == nil || !strings.Contains(out, "needs the writer role") {
		t.Fatalf("grafana-bot wrote: %v\n%s", err, out)
	}

	// 5: a rolling upgrade of node1, which carries the NAT VIP: not one
	// connection fails, and the kernel table is as it was.
	before := c(t, l).table(l.Nodes[0])
	traffic := l.StartTraffic(lab.NATVIP + ":80")
	g.Step(nil, "upgrade-drain", "N=1", "OTHER_IP="+l.Nodes[1].Addr)
	g.PlaceDeb("../../build", "1.2.4")
	g.Step(nodes[0], "upgrade-node", "N=1", "IP="+l.Nodes[0].Addr)
	out := g.Step(nil, "upgrade-undrain", "N=1", "OTHER_IP="+l.Nodes[1].Addr)
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
	g.Step(nil, "backup")
	ops("meradm service del web")
	g.Eventually("web gone from node1", func() error {
		if tb := c(t, l).table(l.Nodes[0]); strings.Contains(tb, lab.NATVIP) {
			return fmt.Errorf("table:\n%s", tb)
		}
		return nil
	})
	g.Step(nil, "restore-services")
	tally()

	// A service added after the snapshot is gone once etcd is restored
	// from it; the nodes follow without a restart.
	ops("meradm service add extra tcp 198.19.0.40:80 -s rr")
	g.Eventually("extra on node1", func() error {
		if tb := c(t, l).table(l.Nodes[0]); !strings.Contains(tb, "198.19.0.40") {
			return fmt.Errorf("table:\n%s", tb)
		}
		return nil
	})
	for _, m := range members { // "stop all three"
		_, err := g.Run(m, "", "systemctl stop etcd")
		g.Must(err)
	}
	for i, m := range members {
		g.Step(m, "restore-etcd", fmt.Sprintf("N=%d", i+1), "IP="+etcdIP(i+1))
	}
	g.Eventually("etcd restored: extra gone from both nodes, web still served", func() error {
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

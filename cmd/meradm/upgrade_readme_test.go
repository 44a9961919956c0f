package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/testobj"
)

var upgradeStep = regexp.MustCompile("(?s)<!-- upgrade-step: ([a-z0-9-]+) -->\n *```sh\n(.*?)```")

// readmeUpgradeSteps are the README's upgrade steps by name.
func readmeUpgradeSteps(t *testing.T) map[string]string {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	steps := map[string]string{}
	for _, m := range upgradeStep.FindAllSubmatch(raw, -1) {
		steps[string(m[1])] = string(m[2])
	}
	for _, want := range []string{"etcd2", "start", "check"} {
		if steps[want] == "" {
			t.Fatalf("README has no upgrade step %q", want)
		}
	}
	return steps
}

// systemctlShim stands in for systemctl: it starts and stops etcd and
// merlin from the command lines the test gives it, and waits until what it
// started answers.
const systemctlShim = `#!/bin/sh
set -e
what="$1 $2"
pidfile="$SHIM_DIR/$2.pid"
case "$what" in
"start etcd")
	$SHIM_ETCD_CMD >>"$SHIM_DIR/etcd.log" 2>&1 &
	echo $! >"$pidfile"
	for i in $(seq 100); do curl -fs "$SHIM_ETCD_URL/health" >/dev/null && exit 0; sleep 0.1; done
	echo "etcd did not start" >&2; exit 1 ;;
"start merlin")
	$MERLIN_CMD >>"$SHIM_DIR/merlin.log" 2>&1 &
	echo $! >"$pidfile"
	for i in $(seq 100); do curl -fs "$MERLIN_READY" >/dev/null && exit 0; sleep 0.1; done
	echo "merlin did not start" >&2; exit 1 ;;
"stop etcd"|"stop merlin")
	[ -f "$pidfile" ] || exit 0
	pid=$(cat "$pidfile"); kill "$pid" 2>/dev/null || true
	while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
	rm -f "$pidfile" ;;
*) echo "systemctl stand-in: $what not known" >&2; exit 1 ;;
esac
`

// TestReadmeUpgradeSteps runs the README's upgrade steps as written on
// what the original Merlin left in etcd2 (its default backend): values
// written through the v2 API, among them objects merlin finds invalid and
// two services on one VIP. The status the check step prints lists each
// with a fix line; running those lines leaves nothing to fix.
func TestReadmeUpgradeSteps(t *testing.T) {
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		testenv.Missing(t, testenv.PeersPromised(), "Debian's etcd (package etcd-server) not installed")
	}
	steps := readmeUpgradeSteps(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "meradm"), ".").CombinedOutput(); err != nil {
		t.Fatalf("build meradm: %v\n%s", err, out)
	}
	if err := os.Symlink(merlinBinary, filepath.Join(bin, "merlin")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "systemctl"), []byte(systemctlShim), 0o755); err != nil {
		t.Fatal(err)
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))
	apiPort, healthPort := etcdtest.FreePort(t), etcdtest.FreePort(t)
	env := append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "SHIM_DIR="+dir, "ETCD_DATA_DIR="+filepath.Join(dir, "etcd"),
		"SHIM_ETCD_URL="+etcdURL, "MERLIN_HOST=127.0.0.1", "MERLIN_PORT="+strconv.Itoa(apiPort),
		fmt.Sprintf("MERLIN_READY=http://127.0.0.1:%d/readyz", healthPort),
		// etcd takes its data directory from ETCD_DATA_DIR, as Debian's
		// /etc/default/etcd sets it (and the README's step reads it).
		fmt.Sprintf("SHIM_ETCD_CMD=%s --name u --enable-v2 --listen-client-urls %s --advertise-client-urls %s --listen-peer-urls %s --initial-advertise-peer-urls %s --initial-cluster u=%s",
			etcdBin, etcdURL, etcdURL, peerURL, peerURL, peerURL),
		fmt.Sprintf("MERLIN_CMD=merlin -data-dir %s -store-endpoints %s -api-address 127.0.0.1 -port %d -health-port %d -reconcile=false",
			filepath.Join(dir, "merlin"), etcdURL, apiPort, healthPort))
	sh := func(what, script string) string {
		t.Helper()
		cmd := exec.Command("sh", "-ec", script)
		cmd.Env, cmd.Dir = env, dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			etcdLog, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
			log, _ := os.ReadFile(filepath.Join(dir, "merlin.log"))
			t.Fatalf("%s: %v\n%s\netcd log:\n%s\nmerlin log:\n%s", what, err, out, lastLines(etcdLog, 20), lastLines(log, 40))
		}
		return string(out)
	}
	t.Cleanup(func() { sh("stop", "systemctl stop merlin; systemctl stop etcd") })

	sh("the original's etcd", "systemctl start etcd")
	originalEtcd2State(t, etcdURL)
	sh("step etcd2", steps["etcd2"])
	if out := sh("step start", steps["start"]); !strings.Contains(out, "merlin version ") {
		t.Errorf("merlin --version printed %q", out)
	}
	status := sh("step check", steps["check"])
	var fixes []string
	for _, line := range strings.Split(status, "\n") {
		if cmd, ok := strings.CutPrefix(strings.TrimSpace(line), "fix: meradm "); ok {
			fixes = append(fixes, "meradm "+cmd)
		}
	}
	if len(fixes) != 3 {
		t.Fatalf("%d fix commands, want 3 (a scheduler, a weight, a shared VIP):\n%s", len(fixes), status)
	}
	sh("the fixes", strings.Join(fixes, "\n"))
	if after := sh("step check again", steps["check"]); strings.Contains(after, "fix:") || !strings.Contains(after, "desired revision") {
		t.Errorf("after the fixes:\n%s", after)
	}
	if list := sh("list", "meradm list"); !strings.Contains(list, "198.19.0.4:80") {
		t.Errorf("the fixed service's server is not listed:\n%s", list)
	}
}

// originalEtcd2State writes, through etcd's v2 API as the original's etcd2
// backend did (base64 of the protobuf), a service with an unknown
// scheduler and its server, a server with a weight above 65535, and two
// services on one VIP.
func originalEtcd2State(t *testing.T, etcdURL string) {
	odd := testobj.TCPService("oddsched", "198.18.0.20", 80)
	odd.Config.Scheduler = "bogus"
	for key, m := range map[string]proto.Message{
		"/merlin/services/oddsched":              odd,
		"/merlin/servers/oddsched/198.19.0.4:80": testobj.Server("oddsched", "198.19.0.4", 80, 1),
		"/merlin/services/web":                   testobj.TCPService("web", "198.18.0.21", 80),
		"/merlin/servers/web/198.19.0.2:80":      testobj.Server("web", "198.19.0.2", 80, 70000),
		"/merlin/services/twin-a":                testobj.TCPService("twin-a", "198.18.0.22", 80),
		"/merlin/services/twin-b":                testobj.TCPService("twin-b", "198.18.0.22", 80),
	} {
		raw, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		etcdtest.PutV2(t, etcdURL, key, base64.StdEncoding.EncodeToString(raw))
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

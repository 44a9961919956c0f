package systemd

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// testDeb is the package the test script builds before the VM tests
// (scripts/test.sh, make vmtest).
const testDeb = "../../build/merlin_1.2.3-1_amd64.deb"

// TestVMPackage: the Debian package under a real systemd (PID 1). dpkg -i
// installs it; `systemctl enable --now merlin` returns once merlin said
// READY=1 (Type=notify), with the hardened unit's sandbox: the API
// answers, a service reaches the kernel's IPVS table and its VIP the
// interface, `systemd-analyze security` scores the running unit, the
// journal has merlin's log, reload re-reads the file; stop leaves IPVS
// and the VIP in place; purge removes configuration and state.
func TestVMPackage(t *testing.T) {
	if !testenv.InVM() {
		testenv.Missing(t, false, "needs the VM with systemd (make vmtest)")
	}
	if _, err := os.Stat(testDeb); err != nil {
		t.Fatalf("%s: %v (scripts/test.sh builds it before the VM tests)", testDeb, err)
	}
	t.Cleanup(journalOnFailure(t))
	t0 := time.Now()
	step := func(what string) { t.Logf("+%s %s", time.Since(t0).Round(100*time.Millisecond), what) }
	run(t, "dpkg", "-i", testDeb)
	step("installed")
	if err := os.WriteFile("/etc/merlin/merlin.yaml", []byte("node: vm1\nvip-interface: merlin0\ndirector-sysctls: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "systemctl", "enable", "--now", "merlin")
	step("systemctl enable --now merlin returned")
	if st := strings.TrimSpace(output(t, "systemctl", "is-active", "merlin")); st != "active" {
		t.Fatalf("merlin is %s after enable --now", st)
	}
	meradm := "/usr/bin/meradm"
	run(t, meradm, "service", "add", "web", "tcp", "198.19.0.1:80", "-s", "wlc")
	run(t, meradm, "server", "add", "web", "198.18.2.9:8080", "-f", "masq")
	eventually(t, "the service in the kernel and its VIP on merlin0", func() error {
		ipvs, addrs := output(t, "ipvsadm", "-Ln"), output(t, "ip", "addr", "show", "merlin0")
		if !strings.Contains(ipvs, "198.19.0.1:80") || !strings.Contains(ipvs, "198.18.2.9:8080") || !strings.Contains(addrs, "198.19.0.1/32") {
			return fmt.Errorf("ipvsadm:\n%s\nmerlin0:\n%s", ipvs, addrs)
		}
		return nil
	})
	step("the service programmed")
	sec := output(t, "systemd-analyze", "security", "merlin", "--no-pager")
	m := regexp.MustCompile(`Overall exposure level for merlin.service: ([0-9.]+)`).FindStringSubmatch(sec)
	if m == nil {
		t.Fatalf("systemd-analyze security:\n%s", sec)
	}
	if score, _ := strconv.ParseFloat(m[1], 64); score > 2.5 {
		t.Errorf("the running unit's exposure is %s, want at most 2.5:\n%s", m[1], sec)
	}
	t.Logf("systemd-analyze security merlin: %s", m[0])
	run(t, "systemctl", "reload", "merlin")
	eventually(t, "the reload in the journal", func() error {
		if j := output(t, "journalctl", "-u", "merlin", "--no-pager"); !strings.Contains(j, "SIGHUP: configuration re-read") {
			return fmt.Errorf("journal:\n%s", j)
		}
		return nil
	})
	step("reloaded")
	run(t, "systemctl", "stop", "merlin")
	step("stopped")
	if ipvs := output(t, "ipvsadm", "-Ln"); !strings.Contains(ipvs, "198.18.2.9:8080") {
		t.Errorf("stop removed the IPVS service (static stability):\n%s", ipvs)
	}
	if addrs := output(t, "ip", "addr", "show", "merlin0"); !strings.Contains(addrs, "198.19.0.1/32") {
		t.Errorf("stop removed the VIP:\n%s", addrs)
	}
	run(t, "dpkg", "--purge", "merlin")
	step("purged")
	for _, p := range []string{"/etc/merlin", "/var/lib/merlin", "/usr/sbin/merlin", "/lib/systemd/system/merlin.service"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is left after dpkg --purge", p)
		}
	}
	if _, err := os.Stat(filepath.Join("/sys/fs/bpf", "merlin")); err == nil {
		t.Errorf("counter pins are left after dpkg --purge")
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, _ := exec.Command(name, args...).CombinedOutput()
	return string(out)
}

func eventually(t *testing.T, what string, fn func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = fn(); err == nil {
			return
		}
	}
	t.Fatalf("no %s within 60s: %v", what, err)
}

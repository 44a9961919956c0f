package systemd

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// TestVMSystemdBoots: the guest runs systemd as PID 1.
func TestVMSystemdBoots(t *testing.T) {
	if !testenv.InVM() {
		testenv.Missing(t, false, "needs the VM with systemd (make vmtest)")
	}
	comm, err := os.ReadFile("/proc/1/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "systemd" {
		t.Fatalf("PID 1 is %q (%v), want systemd", comm, err)
	}
	out, err := exec.Command("systemctl", "is-system-running").CombinedOutput()
	t.Logf("systemctl is-system-running: %s (%v)", out, err)
	out, _ = exec.Command("findmnt", "-R", "/sys").CombinedOutput()
	t.Logf("mounts under /sys:\n%s", out)
	if out, err := exec.Command("systemd-detect-virt", "--container").CombinedOutput(); err == nil {
		t.Errorf("systemd takes the guest for a container (%s): it would not mount bpffs nor share mount propagation as on a machine", strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE", "/sys/fs/bpf").Output(); err != nil || strings.TrimSpace(string(out)) != "bpf" {
		t.Errorf("systemd did not mount bpffs at /sys/fs/bpf: %q %v", out, err)
	}
	out, _ = exec.Command("systemctl", "list-units", "--no-pager").CombinedOutput()
	t.Logf("units:\n%s", out)
}

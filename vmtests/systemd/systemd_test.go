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
	out, _ = exec.Command("systemctl", "list-units", "--no-pager").CombinedOutput()
	t.Logf("units:\n%s", out)
}

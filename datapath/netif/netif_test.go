package netif

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// TestKernelVIPsOnDummy needs the dummy driver: the build machines' kernel
// lacks it, so it runs in the VM tier.
func TestKernelVIPsOnDummy(t *testing.T) {
	ns := testenv.NewNetNS(t)
	if out, err := ns.Command("ip", "link", "add", "probe0", "type", "dummy").CombinedOutput(); err != nil {
		testenv.Missing(t, testenv.InVM(), "no dummy interfaces in this kernel: %s", strings.TrimSpace(string(out)))
	}
	ns.Run(t, "ip", "link", "del", "probe0")
	state := filepath.Join(t.TempDir(), "vips.json")
	a, b := netip.MustParseAddr("198.18.0.10"), netip.MustParseAddr("2001:db8::10")
	err := ns.Do(func() error {
		v, err := NewVIPs("merlin0", state)
		if err != nil {
			return err
		}
		return v.SetVIPs(t.Context(), []netip.Addr{a, b})
	})
	if err != nil {
		t.Fatal(err)
	}
	// Someone else's address on the same interface.
	ns.Run(t, "ip", "addr", "add", "198.18.0.99/32", "dev", "merlin0")
	show := func() string { return ns.Run(t, "ip", "addr", "show", "dev", "merlin0") }
	if out := show(); !strings.Contains(out, "198.18.0.10/32") || !strings.Contains(out, "2001:db8::10/128") || !strings.Contains(out, "UP") {
		t.Fatalf("VIPs not added:\n%s", out)
	}
	// A restarted manager removes only what it added.
	err = ns.Do(func() error {
		v, err := NewVIPs("merlin0", state)
		if err != nil {
			return err
		}
		return v.SetVIPs(t.Context(), []netip.Addr{b})
	})
	if err != nil {
		t.Fatal(err)
	}
	if out := show(); strings.Contains(out, "198.18.0.10/32") || !strings.Contains(out, "198.18.0.99/32") || !strings.Contains(out, "2001:db8::10/128") {
		t.Fatalf("after removing one VIP:\n%s", out)
	}
}

func TestDirectorSysctls(t *testing.T) {
	ns := testenv.NewNetNS(t)
	if _, err := os.Stat("/proc/sys/net/ipv4/vs"); err != nil {
		// The host kernel has no IPVS: only ip_forward can be set here; the
		// VM tests set all of them.
		err := ns.Do(func() error { return SetSysctls(map[string]string{"net.ipv4.ip_forward": "1"}) })
		if err != nil {
			t.Fatal(err)
		}
		if out := ns.Run(t, "sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(out) != "1" {
			t.Fatalf("ip_forward = %q", out)
		}
		return
	}
	if err := ns.Do(func() error { return SetSysctls(DirectorSysctls) }); err != nil {
		t.Fatal(err)
	}
	if out := ns.Run(t, "sysctl", "-n", "net.ipv4.vs.expire_nodest_conn"); strings.TrimSpace(out) != "1" {
		t.Fatalf("expire_nodest_conn = %q", out)
	}
}

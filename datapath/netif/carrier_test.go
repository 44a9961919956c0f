package netif

import (
	"os"
	"strings"
	"testing"
)

func TestCarrierOfLoopback(t *testing.T) {
	if _, err := os.Stat(SysClassNet + "/lo/carrier_changes"); err != nil {
		t.Skipf("no sysfs network class here: %v", err)
	}
	up, _, err := Carrier("lo")
	if err != nil || !up {
		t.Fatalf("Carrier(lo) = %v, %v; want up", up, err)
	}
}

func TestCarrierRefusesPaths(t *testing.T) {
	for _, name := range []string{"", "..", "../../etc", "a/b"} {
		if _, _, err := Carrier(name); err == nil || !strings.Contains(err.Error(), "not an interface name") {
			t.Errorf("Carrier(%q): %v", name, err)
		}
	}
	if _, _, err := Carrier("merlin-no-such0"); err == nil || !strings.Contains(err.Error(), "merlin-no-such0") {
		t.Errorf("a missing interface: %v", err)
	}
}

package netif

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// SysClassNet is where Carrier reads interfaces (a variable for tests).
var SysClassNet = "/sys/class/net"

// Carrier reports whether an interface has carrier and how many times its
// carrier has changed since it was created (the kernel's carrier_changes,
// which catches a flap however short). An interface that is
// administratively down has no carrier.
func Carrier(name string) (up bool, changes uint64, err error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return false, 0, fmt.Errorf("interface %q: not an interface name", name)
	}
	dir := filepath.Join(SysClassNet, name)
	raw, err := os.ReadFile(filepath.Join(dir, "carrier_changes"))
	if err != nil {
		return false, 0, fmt.Errorf("interface %s: %w", name, err)
	}
	changes, err = strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return false, 0, fmt.Errorf("interface %s: carrier_changes: %w", name, err)
	}
	raw, err = os.ReadFile(filepath.Join(dir, "carrier"))
	switch {
	case errors.Is(err, syscall.EINVAL): // administratively down
		return false, changes, nil
	case err != nil:
		return false, 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return strings.TrimSpace(string(raw)) == "1", changes, nil
}

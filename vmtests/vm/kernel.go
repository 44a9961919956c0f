// Package vm boots Debian's own kernel under qemu (software emulation, no
// network device) and runs one host program inside it, for tests that need
// kernel features the build machine lacks, such as IPVS.
//
// The guest sees the host's root filesystem read-only over 9p with a tmpfs
// overlay on top, so host binaries (ipvsadm, etcd, test binaries) run there
// unchanged; with systemd as PID 1 it boots a root filesystem of its own
// (Options.RootFS, built by scripts/setup.sh) with host directories bound in. It needs qemu-system-x86, busybox-static and a kernel unpacked by
// scripts/setup.sh; it needs no privileges of its own, but the programs run
// inside are root in the guest.
package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultCacheDir is where scripts/setup.sh unpacks the kernel package.
const DefaultCacheDir = "/var/cache/merlin"

// Kernel is an unpacked Debian kernel package ready to boot.
type Kernel struct {
	Dir        string // the package's cache directory, symlinks resolved
	Vmlinux    string // uncompressed ELF kernel (boots directly through its PVH note)
	Release    string // uname -r, e.g. 6.1.0-56-amd64
	DebVersion string // Debian package version, e.g. 6.1.192-2
	ModulesDir string // lib/modules/<release> with a generated modules.dep
}

// FindKernel locates the kernel that scripts/setup.sh prepared. It honours
// MERLIN_CACHE like the script does.
func FindKernel() (*Kernel, error) {
	cache := os.Getenv("MERLIN_CACHE")
	if cache == "" {
		cache = DefaultCacheDir
	}
	return LoadKernel(filepath.Join(cache, "kernel", "current"))
}

// LoadKernel reads an unpacked kernel package directory.
func LoadKernel(dir string) (*Kernel, error) {
	// Paths handed to the guest must be free of symlinks: the guest resolves
	// them inside its own overlay.
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("kernel directory %s (run scripts/setup.sh): %w", dir, err)
	}
	k := &Kernel{Dir: real, Vmlinux: filepath.Join(real, "vmlinux")}
	if _, err := os.Stat(filepath.Join(real, ".complete")); err != nil {
		return nil, fmt.Errorf("kernel directory %s is incomplete (run scripts/setup.sh): %w", real, err)
	}
	if k.Release, err = readTrimmed(filepath.Join(real, "kernel-release")); err != nil {
		return nil, err
	}
	if k.DebVersion, err = readTrimmed(filepath.Join(real, "deb-version")); err != nil {
		return nil, err
	}
	k.ModulesDir = filepath.Join(real, "root", "lib", "modules", k.Release)
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.dep")); err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	return k, nil
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", errors.New(path + " is empty")
	}
	return s, nil
}

// FindRootFS locates the root filesystem scripts/setup.sh built for the
// systemd tier (MERLIN_CACHE/rootfs/current/root), symlinks resolved.
func FindRootFS() (string, error) {
	cache := os.Getenv("MERLIN_CACHE")
	if cache == "" {
		cache = DefaultCacheDir
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(cache, "rootfs", "current"))
	if err != nil {
		return "", fmt.Errorf("root filesystem (run scripts/setup.sh): %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return "", fmt.Errorf("root filesystem %s is incomplete (run scripts/setup.sh): %w", dir, err)
	}
	return filepath.Join(dir, "root"), nil
}

// Package testenv decides at run time whether a privileged or kernel-bound
// test can run here, and gives such tests fresh network namespaces.
//
// A test skips with a reason where a feature is missing, except where the
// environment promises it: MERLIN_VM=1 (set by the VM runner) promises the
// VM kernel's features, such as IPVS; MERLIN_PRIVILEGED=1 (set by CI and
// `make test`) promises root, network namespaces and eBPF on the host.
// There a missing feature fails the test.
package testenv

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// InVM reports whether the test runs inside the merlin test VM.
func InVM() bool { return os.Getenv("MERLIN_VM") == "1" }

// PrivilegedPromised reports whether root and namespaces are promised.
func PrivilegedPromised() bool { return InVM() || os.Getenv("MERLIN_PRIVILEGED") == "1" }

// Missing skips the test, or fails it where the feature was promised.
func Missing(t testing.TB, promised bool, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if promised {
		t.Fatalf("promised by the environment but missing: %s", msg)
	}
	t.Skip("skipping: " + msg)
}

// RequireRoot skips (or fails, where promised) unless running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, PrivilegedPromised(), "needs root")
	}
}

// NetNS is a named network namespace made for one test.
type NetNS struct {
	Name string
	FD   int // open handle, valid until the test ends
}

// NewNetNS creates a named network namespace (so that `ip netns exec` and
// ipvsadm can enter it) with loopback up; it is deleted when the test ends.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		Missing(t, PrivilegedPromised(), "iproute2 (ip) not installed")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "merlin-test-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		Missing(t, PrivilegedPromised(), "cannot create a network namespace: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", name).Run() })
	f, err := os.Open(filepath.Join("/run/netns", name))
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { f.Close() })
	ns := &NetNS{Name: name, FD: int(f.Fd())}
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command inside the namespace and returns its output; a failure
// fails the test.
func (ns *NetNS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := ns.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), ns.Name, err, out)
	}
	return string(out)
}

// Command prepares a command that runs inside the namespace.
func (ns *NetNS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Do runs fn on an OS thread switched into the namespace; sockets fn
// creates stay in the namespace. The thread is discarded if it cannot
// switch back.
func (ns *NetNS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(ns.FD, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

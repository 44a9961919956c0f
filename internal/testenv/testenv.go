// Package testenv decides at run time whether a privileged or kernel-bound
// test can run here, and gives such tests fresh network namespaces.
//
// A test skips with a reason where a feature is missing, except where the
// environment promises it: MERLIN_PEERS=1 promises the peer programs,
// MERLIN_VM=1 (set by the VM runner) promises the
// VM kernel's features, such as IPVS; MERLIN_PRIVILEGED=1 (set by CI and
// `make test`) promises root, network namespaces and eBPF on the host.
// There a missing feature fails the test.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/netns"
)

// InVM reports whether the test runs inside the merlin test VM.
func InVM() bool { return os.Getenv("MERLIN_VM") == "1" }

// PeersPromised reports whether the real peer programs (Debian's etcd, and
// later gobgpd and bird) are promised: `make test` installs them.
func PeersPromised() bool { return InVM() || os.Getenv("MERLIN_PEERS") == "1" }

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
	*netns.NS
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
	ns, err := netns.New("merlin-test-")
	if err != nil {
		Missing(t, PrivilegedPromised(), "cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() { _ = ns.Delete() })
	return &NetNS{NS: ns, Name: ns.Name, FD: ns.FD()}
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

package testrouter

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// Bird is bird2 running in a namespace.
type Bird struct {
	ns    *testenv.NetNS
	birdc string
	sock  string
}

// StartBird runs bird with conf until the test ends.
func StartBird(t *testing.T, ns *testenv.NetNS, conf string) *Bird {
	t.Helper()
	bird := Look(t, "bird")
	b := &Bird{ns: ns, birdc: Look(t, "birdc")}
	dir := t.TempDir()
	path := filepath.Join(dir, "bird.conf")
	b.sock = filepath.Join(dir, "bird.ctl")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	Daemon(t, ns, bird, "-f", "-c", path, "-s", b.sock)
	return b
}

// Cmd runs a birdc command and returns its output (errors included).
func (b *Bird) Cmd(args ...string) string {
	out, _ := b.ns.Command(b.birdc, append([]string{"-s", b.sock}, args...)...).CombinedOutput()
	return string(out)
}

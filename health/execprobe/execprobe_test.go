//go:build linux

package execprobe_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/health/execprobe"
	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// checkDir makes a directory only root may change, that nobody may enter,
// with the given scripts (mode 0755).
func checkDir(t *testing.T, scripts map[string]string) string {
	t.Helper()
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "checks")
	for d := filepath.Dir(dir); d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func probe(t *testing.T, p *execprobe.Prober, command string, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return p.Probe(ctx, health.Check{Kind: health.Exec, Target: netip.MustParseAddrPort("198.18.0.5:8080"), Probe: health.ProbeOf(health.ProbeSpec{Command: command})})
}

func wantError(t *testing.T, err error, reason, text string) {
	t.Helper()
	if err == nil || health.Reason(err) != reason || !strings.Contains(err.Error(), text) {
		t.Fatalf("got %v (reason %s), want %s with %q", err, health.Reason(err), reason, text)
	}
}

func TestExecChecksRunUnprivilegedFromTheDirectory(t *testing.T) {
	dir := checkDir(t, map[string]string{
		"ok.sh":    `[ "$MERLIN_TARGET_IP" = 198.18.0.5 ] && [ "$MERLIN_TARGET_PORT" = 8080 ] && [ "$(id -u)" = 65534 ] && [ -z "$HOME" ]`,
		"fail.sh":  `echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) arg=$1"; exit 3`,
		"noisy.sh": `head -c 100000 /dev/zero | tr '\0' x; exit 1`,
		"hang.sh":  `sleep 300 & echo $! > "$1"; wait`,
	})
	p, err := execprobe.New(execprobe.Config{Dir: dir, User: "nobody"})
	if err != nil {
		t.Fatal(err)
	}
	if err := probe(t, p, "ok.sh", 10*time.Second); err != nil {
		t.Fatalf("ok.sh: %v", err)
	}
	if err := probe(t, p, filepath.Join(dir, "ok.sh"), 10*time.Second); err != nil {
		t.Fatalf("ok.sh by its absolute path: %v", err)
	}
	wantError(t, probe(t, p, "fail.sh one", 10*time.Second), health.ReasonExit, "uid=65534 gid=65534 groups=65534 arg=one")
	err = probe(t, p, "noisy.sh", 10*time.Second)
	wantError(t, err, health.ReasonExit, "more bytes)")
	if n := len(err.Error()); n > execprobe.OutputLimit+200 {
		t.Fatalf("failure message of %d bytes from a program writing 100,000", n)
	}

	// On timeout the whole process group goes, the child it left too.
	pidDir := t.TempDir()
	if err := os.Chmod(pidDir, 0o777); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(pidDir, "pid")
	wantError(t, probe(t, p, "hang.sh "+pidFile, 500*time.Millisecond), health.ReasonTimeout, "hang.sh")
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(child, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the timed-out check's child %d still runs", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExecChecksRefuseProgramsOutsideTheDirectory(t *testing.T) {
	dir := checkDir(t, map[string]string{"ok.sh": "true", "writable.sh": "true"})
	if err := os.Chmod(filepath.Join(dir, "writable.sh"), 0o775); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/bin/true", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "plain"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := execprobe.New(execprobe.Config{Dir: dir, User: "nobody"})
	if err != nil {
		t.Fatal(err)
	}
	for command, want := range map[string]string{
		"/bin/true":                       "is not in the exec check directory",
		"sh -c true":                      `program "sh"`,
		"../../../../../../../etc/passwd": "is not in the exec check directory",
		"link":                            "is not in the exec check directory",
		"writable.sh":                     "may be written by others than root",
		"plain":                           "is not executable",
		"missing.sh":                      "no such file",
		"  ":                              "empty command",
	} {
		wantError(t, probe(t, p, command, 10*time.Second), health.ReasonOther, want)
	}
}

func TestExecCheckConfig(t *testing.T) {
	dir := checkDir(t, nil)
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  execprobe.Config
		want string
	}{
		{execprobe.Config{Dir: dir, User: "root"}, `user "root" is root`},
		{execprobe.Config{Dir: dir, User: "0"}, "is root"},
		{execprobe.Config{Dir: dir, User: "no-such-user-here"}, "no such user"},
		{execprobe.Config{Dir: "checks", User: "nobody"}, "want an absolute path"},
		{execprobe.Config{Dir: open, User: "nobody"}, "may be written by others than root"},
		{execprobe.Config{Dir: "/nonexistent/checks", User: "nobody"}, "no such file"},
	} {
		_, err := execprobe.New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := execprobe.New(execprobe.Config{Dir: dir, User: "65534"}); err != nil {
		t.Errorf("numeric user: %v", err)
	}

	// Without CAP_SETUID (dropped on this locked thread only) exec checks
	// cannot run as another user: New says so instead of every probe.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	saved := data
	data[0].Effective &^= 1 << unix.CAP_SETUID
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	_, err := execprobe.New(execprobe.Config{Dir: dir, User: "nobody"})
	if err := unix.Capset(&hdr, &saved[0]); err != nil {
		t.Fatal(err)
	}
	if err == nil || !strings.Contains(err.Error(), "lacks CAP_SETUID and CAP_SETGID") {
		t.Fatalf("without CAP_SETUID: %v", err)
	}
}

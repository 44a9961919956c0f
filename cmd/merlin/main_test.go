package main

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

func TestExampleConfigParses(t *testing.T) {
	o, err := parseFlags([]string{"-config", "../../deploy/merlin.yaml", "-node", "override"})
	if err != nil {
		t.Fatal(err)
	}
	if o.node != "override" || o.storeEndpoints != "https://etcd0:2379,https://etcd1:2379,https://etcd2:2379" ||
		o.resync != 30*time.Second || !o.sysctls || o.guardFraction != 0.5 || o.adopt != "198.18.0.0/24" || o.apiAddress != "0.0.0.0" {
		t.Fatalf("options from the example config: %+v", o)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{
		"no-such-flag: 1\n":                                    "unknown setting \"no-such-flag\"",
		"reconcile-sync-period: often\n":                       "reconcile-sync-period",
		"port: 70000\n":                                        "-port 70000",
		"tls-cert: a.pem\n":                                    "-tls-cert and -tls-key go together",
		"reconcile: [not, a, bool, list]\n":                    "reconcile",
		"log-format: xml\n":                                    "-log-format \"xml\": want text or json",
		"max-message-bytes: -1\n":                              "-max-message-bytes -1",
		"store-tls-key: k.pem\n":                               "-store-tls-cert and -store-tls-key go together",
		"store-endpoints: [etcd0]\n":                           "-store-endpoints \"etcd0\"",
		"embedded-etcd-client-url: x\n":                        "-embedded-etcd-client-url",
		"max-concurrent-streams: 0\n":                          "-max-concurrent-streams 0",
		"metrics-read-timeout: 1ns\n":                          "-metrics-read-timeout 1ns: want 100ms to 10m",
		"metrics-read-interval: 1ns\n":                         "-metrics-read-interval 1ns: want 100ms to 1h",
		"metrics-backend-families: nope\n":                     `metrics-backend-families: unknown per-backend family "nope"`,
		"counters-xdp-mode: turbo\n":                           "-counters-xdp-mode \"turbo\": want native, generic or empty",
		"counters-tc-interfaces: [\"../x\"]\n":                 "not an interface name",
		"deletion-guard-fraction: 2\n":                         "-deletion-guard-fraction 2",
		"deletion-guard-min: -1\n":                             "-deletion-guard-min -1",
		"node: a/b\n":                                          "-node: node",
		"node: " + strings.Repeat("n", 64) + "\n":              "-node: node",
		"health-exec-dir: /usr/lib/merlin\nreconcile: false\n": "-health-exec-dir with -reconcile=false",
	} {
		path := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := parseFlags([]string{"-config", path})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", content, err, want)
		}
	}
}

// TestMain lets a test run this test binary as the merlin command.
func TestGuardFractionNaN(t *testing.T) {
	if _, err := parseFlags([]string{"-deletion-guard-fraction", "NaN"}); err == nil || !strings.Contains(err.Error(), "-deletion-guard-fraction NaN") {
		t.Fatalf("NaN: %v", err)
	}
}

// A file setting the command line overrides is said once at start.
func TestCommandLineOverridesAreSaid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("port: 4000\nreconcile-sync-period: 10s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"-config", path, "-port", "4001"})
	if err != nil {
		t.Fatal(err)
	}
	if o.port != 4001 || o.resync != 10*time.Second || len(o.notices) != 1 || !strings.Contains(o.notices[0], `-port on the command line overrides "4000"`) {
		t.Fatalf("port %d, resync %s, notices %q", o.port, o.resync, o.notices)
	}
}

func TestMain(m *testing.M) {
	if os.Getenv("MERLIN_TEST_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A listener that cannot be opened ends merlin at once with the reason,
// before any etcd or agent starts (it used to wait for a signal).
func TestExitsWhenAPortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := strconv.Itoa(taken.Addr().(*net.TCPAddr).Port)
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"health port": {[]string{"-port", freePort(t), "-health-port", port}, "health listen (-health-port " + port + ")"},
		"API port":    {[]string{"-port", port, "-health-port", freePort(t)}, "API listen"},
	} {
		t.Run(name, func(t *testing.T) {
			args := append([]string{"-data-dir", t.TempDir(), "-api-address", "127.0.0.1", "-reconcile=false"}, tc.args...)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang fails here, not in go test's timeout
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], args...)
			cmd.Env = append(os.Environ(), "MERLIN_TEST_RUN_MAIN=1")
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("merlin: %v (want exit status 1)\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) || strings.Contains(string(out), "embedded etcd started") {
				t.Fatalf("output does not name %q before starting etcd:\n%s", tc.want, out)
			}
		})
	}
}

// A clean start and stop logs no error and no stack trace, in one format
// (etcd's own logs included).
func TestCleanStartAndStopLogNoErrors(t *testing.T) {
	health := freePort(t)
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			cmd, out := startAPIOnly(t, "-log-format", format, "-port", freePort(t), "-health-port", health)
			deadline := time.Now().Add(60 * time.Second)
			for {
				resp, err := http.Get("http://127.0.0.1:" + health + "/readyz")
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == 200 {
						break
					}
				}
				if time.Now().After(deadline) {
					_ = cmd.Process.Kill()
					_ = cmd.Wait()
					t.Fatalf("not ready:\n%s", out.String())
				}
				time.Sleep(50 * time.Millisecond) // polling readiness
			}
			_ = cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("merlin after SIGTERM: %v\n%s", err, out.String())
			}
			for i, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				bad := strings.Contains(line, "level=ERROR") || strings.Contains(line, `"level":"ERROR"`) ||
					strings.Contains(line, "stacktrace") || strings.HasPrefix(line, "goroutine ")
				json := strings.HasPrefix(line, "{")
				if bad || json != (format == "json") {
					t.Fatalf("line %d is an error, a stack trace or in another format:\n%s\n\nwhole log:\n%s", i+1, line, out.String())
				}
			}
		})
	}
}

// The original Merlin's command lines start: -store-backend etcd3.
func TestOriginalStoreBackendFlag(t *testing.T) {
	if _, err := parseFlags([]string{"-store-backend", "etcd3", "-store-endpoints", "http://127.0.0.1:2379"}); err != nil {
		t.Fatal(err)
	}
}

func TestVersionFlag(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--version")
	cmd.Env = append(os.Environ(), "MERLIN_TEST_RUN_MAIN=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "merlin version ") || !strings.Contains(string(out), "go1.") {
		t.Fatalf("merlin --version: %v: %q", err, out)
	}
}

// startAPIOnly starts this binary as merlin serving only the API, with an
// embedded etcd on free ports, logging to the returned builder.
func startAPIOnly(t *testing.T, args ...string) (*exec.Cmd, *testenv.Buffer) {
	t.Helper()
	return startAPIOnlyUnder(t, nil, args...)
}

// startAPIOnlyUnder is startAPIOnly through a wrapper command (prlimit …).
func startAPIOnlyUnder(t *testing.T, wrapper []string, args ...string) (*exec.Cmd, *testenv.Buffer) {
	t.Helper()
	args = append([]string{"-data-dir", t.TempDir(), "-api-address", "127.0.0.1", "-reconcile=false",
		"-embedded-etcd-client-url", "http://127.0.0.1:" + freePort(t), "-embedded-etcd-peer-url", "http://127.0.0.1:" + freePort(t)}, args...)
	argv := append(append(wrapper[:len(wrapper):len(wrapper)], os.Args[0]), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "MERLIN_TEST_RUN_MAIN=1")
	out := &testenv.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, out
}

// freePort is a TCP port on 127.0.0.1 that was free a moment ago, below
// Linux's ephemeral range (32768 up): a port the kernel handed out for
// ":0" goes back to the pool it gives client connections from, and a
// test package running alongside could connect from it before merlin
// binds it (the likely cause of one failed run whose log was lost).
func freePort(t *testing.T) string {
	t.Helper()
	for range 100 {
		port := strconv.Itoa(20000 + rand.IntN(12000))
		if l, err := net.Listen("tcp", "127.0.0.1:"+port); err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port between 20000 and 32000 in 100 tries")
	return ""
}

// A non-loopback API needs client certificates, or -insecure-api said out
// loud; the health port stays on loopback unless told otherwise.
func TestAPIExposureNeedsClientAuth(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" accepted
	}{
		{[]string{"-api-address", "0.0.0.0"}, `-api-address "0.0.0.0": a non-loopback API needs client certificates`},
		{[]string{"-api-address", "198.18.0.1", "-tls-cert", "c.pem", "-tls-key", "k.pem"}, "needs client certificates"},
		{[]string{"-api-address", "198.18.0.1", "-insecure-api"}, ""},
		{[]string{"-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-client-ca", "ca.pem"}, ""},
		{[]string{"-api-address", "::1"}, ""},
		{[]string{"-health-port", "70000"}, "-health-port 70000"},
		{[]string{"-api-writers", "ops"}, "-api-readers and -api-writers name client certificates: they need -tls-client-ca"},
		{[]string{"-api-readers", "bot", "-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-client-ca", "ca.pem"}, ""},
	} {
		o, err := parseFlags(tc.args)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		case err == nil && o.healthAddress != "127.0.0.1":
			t.Errorf("%v: health address %q", tc.args, o.healthAddress)
		}
	}
	if o, _ := parseFlags([]string{"-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-client-ca", "ca.pem"}); o.apiAddress != "" {
		t.Errorf("with mutual TLS the API listens on %q, want every address", o.apiAddress)
	}
	if o, _ := parseFlags(nil); o.apiAddress != "127.0.0.1" || o.pprof {
		t.Errorf("defaults: API on %q, pprof %v", o.apiAddress, o.pprof)
	}
}

// merlin tells systemd (Type=notify) it is ready once its API accepts
// connections, and that it is stopping on SIGTERM.
func TestTellsSystemdReadyAndStopping(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	api := freePort(t)
	cmd, out := startAPIOnly(t, "-port", api, "-health-port", "0")
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	read := func(want string) string {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		buf := make([]byte, 4096)
		n, err := conn.Read(buf)
		if err != nil || !strings.Contains(string(buf[:n]), want) {
			t.Fatalf("notification %q, %v; want %s\n%s", buf[:n], err, want, out.String())
		}
		return string(buf[:n])
	}
	msg := read("READY=1")
	if !strings.Contains(msg, "STATUS=serving the API on 127.0.0.1:"+api) {
		t.Fatalf("ready without the status line: %q", msg)
	}
	c, err := net.Dial("tcp", "127.0.0.1:"+api)
	if err != nil {
		t.Fatalf("ready, but the API does not accept: %v", err)
	}
	c.Close()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	read("STOPPING=1")
}

// A corrupt embedded etcd database ends merlin with the reason and how to
// recover, not with etcd's panic.
func TestCorruptEmbeddedDatabase(t *testing.T) {
	dir := t.TempDir()
	snap := filepath.Join(dir, "etcd", "member", "snap")
	if err := os.MkdirAll(snap, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snap, "db"), bytes.Repeat([]byte("not a bolt database "), 5000), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-data-dir", dir, "-api-address", "127.0.0.1", "-reconcile=false", "-port", freePort(t), "-health-port", "0",
		"-embedded-etcd-client-url", "http://127.0.0.1:"+freePort(t), "-embedded-etcd-peer-url", "http://127.0.0.1:"+freePort(t))
	cmd.Env = append(os.Environ(), "MERLIN_TEST_RUN_MAIN=1")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("merlin: %v (want exit status 1)\n%s", err, out)
	}
	if !strings.Contains(string(out), "snap/db is corrupt") || !strings.Contains(string(out), "restore it from a snapshot") || strings.Contains(string(out), "panic") {
		t.Fatalf("output:\n%s", out)
	}
}

// Package etcdtest runs real etcd servers for tests: the embedded server
// merlin itself uses, and Debian's etcd binary (3.4, what many users run).
// Servers listen on loopback ports chosen at run time and stop when the
// test ends. No privileges needed.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/merlin-ipvs/merlin/internal/etcdembed"
	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/tlsconfig"
)

// Kind of etcd server.
type Kind string

const (
	Embedded Kind = "embedded"
	Debian   Kind = "debian" // /usr/bin/etcd from the etcd-server package
)

// Kinds are all kinds, for tests that run against each.
var Kinds = []Kind{Embedded, Debian}

// Server is one running single-node etcd.
type Server struct {
	Kind       Kind
	ClientURL  string
	peerURL    string
	dir        string
	t          testing.TB
	embedded   *etcdembed.Server
	cmd        *exec.Cmd
	cmdExited  chan struct{}
	binaryPath string
	tls        *TLSFiles
	quota      int64 // backend quota; 0: etcd's default
	v2         bool  // serve the v2 API too (StartV2)
}

// TLSFiles make Debian's etcd serve clients over TLS and require client
// certificates signed by ClientCA.
type TLSFiles struct {
	CertFile, KeyFile string // the server's
	ClientCA          string
	// A client certificate the test's own health probe uses.
	ProbeCert, ProbeKey, ServerCA string
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs a server of the given kind until the test ends. Debian's
// binary missing skips the test, or fails it where peers are promised.
func Start(t testing.TB, kind Kind) *Server {
	t.Helper()
	return start(t, kind, nil, startOptions{})
}

// StartTLS runs Debian's etcd serving clients over mutual TLS.
func StartTLS(t testing.TB, files TLSFiles) *Server {
	t.Helper()
	return start(t, Debian, &files, startOptions{})
}

// StartWithQuota runs a server whose backend quota is bytes: past it,
// etcd raises its NOSPACE alarm.
func StartWithQuota(t testing.TB, kind Kind, bytes int64) *Server {
	t.Helper()
	return start(t, kind, nil, startOptions{quota: bytes})
}

// StartV2 starts Debian's etcd serving the v2 API too (--enable-v2), as
// the original Merlin's default etcd2 backend needed.
func StartV2(t testing.TB) *Server {
	t.Helper()
	return start(t, Debian, nil, startOptions{v2: true})
}

// PutV2 writes key through the v2 API of the etcd at clientURL (one
// serving it: StartV2), as the original Merlin's etcd2 backend did.
func PutV2(t testing.TB, clientURL, key, value string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, clientURL+"/v2/keys"+key, strings.NewReader(url.Values{"value": {value}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("v2 put %s: %s", key, resp.Status)
	}
}

// MigrateV2 stops the server, copies its v2 keys into the v3 store with
// `etcdctl migrate` (etcd 3.4's offline migration) and starts it again.
func (s *Server) MigrateV2() {
	s.t.Helper()
	s.Stop()
	cmd := exec.Command("etcdctl", "migrate", "--data-dir", filepath.Join(s.dir, "etcd"))
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("etcdctl migrate: %v: %s", err, out)
	}
	s.Restart()
}

// startOptions: a backend quota (0: etcd's default) and the v2 API.
type startOptions struct {
	quota int64
	v2    bool
}

func start(t testing.TB, kind Kind, tlsFiles *TLSFiles, opt startOptions) *Server {
	t.Helper()
	scheme := "http"
	if tlsFiles != nil {
		scheme = "https"
	}
	s := &Server{
		tls:       tlsFiles,
		Kind:      kind,
		ClientURL: scheme + "://127.0.0.1:" + strconv.Itoa(FreePort(t)),
		peerURL:   "http://127.0.0.1:" + strconv.Itoa(FreePort(t)),
		dir:       t.TempDir(),
		t:         t,
	}
	s.quota, s.v2 = opt.quota, opt.v2
	if kind == Debian {
		path, err := exec.LookPath("etcd")
		if err != nil {
			testenv.Missing(t, testenv.PeersPromised(), "Debian's etcd binary (package etcd-server) not installed")
		}
		s.binaryPath = path
	}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

// Stop stops the server (kills the binary); Restart brings it back with the
// same data and address.
func (s *Server) Stop() {
	if s.embedded != nil {
		s.embedded.Close()
		s.embedded = nil
	}
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		<-s.cmdExited
		s.cmd = nil
	}
}

// Restart starts a stopped server again and waits until it is healthy.
func (s *Server) Restart() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switch s.Kind {
	case Embedded:
		e, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: s.dir, ClientURL: s.ClientURL, PeerURL: s.peerURL, QuotaBytes: s.quota})
		if err != nil {
			s.t.Fatalf("embedded etcd: %v", err)
		}
		s.embedded = e
	case Debian:
		logFile, err := os.OpenFile(filepath.Join(s.dir, "etcd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			s.t.Fatal(err)
		}
		cmd := exec.Command(s.binaryPath,
			"--name", "test", "--data-dir", filepath.Join(s.dir, "etcd"),
			"--listen-client-urls", s.ClientURL, "--advertise-client-urls", s.ClientURL,
			"--listen-peer-urls", s.peerURL, "--initial-advertise-peer-urls", s.peerURL,
			"--initial-cluster", "test="+s.peerURL, "--log-level", "error", "--logger", "zap")
		if s.quota > 0 {
			cmd.Args = append(cmd.Args, "--quota-backend-bytes", strconv.FormatInt(s.quota, 10))
		}
		if s.v2 {
			cmd.Args = append(cmd.Args, "--enable-v2")
		}
		probe := http.DefaultClient
		if f := s.tls; f != nil {
			cmd.Args = append(cmd.Args, "--cert-file", f.CertFile, "--key-file", f.KeyFile,
				"--client-cert-auth", "--trusted-ca-file", f.ClientCA)
			tc, err := tlsconfig.Client(f.ServerCA, f.ProbeCert, f.ProbeKey, "")
			if err != nil {
				s.t.Fatal(err)
			}
			probe = &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		}
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			logFile.Close()
			s.t.Fatalf("start %s: %v", s.binaryPath, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); logFile.Close(); close(exited) }()
		s.cmd, s.cmdExited = cmd, exited
		if err := waitHealthy(ctx, probe, s.ClientURL, exited); err != nil {
			log, _ := os.ReadFile(filepath.Join(s.dir, "etcd.log"))
			s.Stop()
			s.t.Fatalf("etcd %s: %v\n%s", s.binaryPath, err, log)
		}
	}
}

func waitHealthy(ctx context.Context, probe *http.Client, url string, exited <-chan struct{}) error {
	for {
		resp, err := probe.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before becoming healthy")
		case <-ctx.Done():
			return fmt.Errorf("not healthy: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Client returns a client of the server, closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return NewClient(t, s.ClientURL)
}

// NewClient connects to the endpoints; the client is closed when the test ends.
func NewClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

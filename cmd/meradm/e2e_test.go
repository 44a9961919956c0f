package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/internal/testpki"
)

var merlinBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meradm-e2e")
	if err != nil {
		panic(err)
	}
	merlinBinary = filepath.Join(dir, "merlin")
	if out, err := exec.Command("go", "build", "-o", merlinBinary, "../merlin").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build merlin: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startMerlin runs the merlin binary with its embedded etcd until the test
// ends and returns its API port.
func startMerlin(t *testing.T, extra ...string) int {
	t.Helper()
	port, _ := startMerlinWithLog(t, extra...)
	return port
}

// startMerlinWithLog is startMerlin that also hands back merlin's log.
func startMerlinWithLog(t *testing.T, extra ...string) (int, *syncBuffer) {
	t.Helper()
	// A port that was free a moment ago may be taken by a test running
	// beside this one: start again on others.
	for attempt := 1; ; attempt++ {
		port, log, err := tryStartMerlin(t, extra...)
		if err == nil {
			return port, log
		}
		if attempt == 3 || !strings.Contains(log.String(), "address already in use") {
			t.Fatalf("%v\n%s", err, log)
		}
	}
}

// tryStartMerlin starts merlin on free ports and waits until it is ready;
// on failure it returns merlin's log.
func tryStartMerlin(t *testing.T, extra ...string) (int, *syncBuffer, error) {
	t.Helper()
	port, health := etcdtest.FreePort(t), etcdtest.FreePort(t)
	args := append([]string{"-data-dir", t.TempDir(), "-port", strconv.Itoa(port), "-health-port", strconv.Itoa(health),
		"-api-address", "127.0.0.1", "-reconcile=false",
		"-embedded-etcd-client-url", fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t)),
		"-embedded-etcd-peer-url", fmt.Sprintf("http://127.0.0.1:%d", etcdtest.FreePort(t))}, extra...)
	log := &syncBuffer{}
	cmd := exec.Command(merlinBinary, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("merlin log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", health))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
					c.Close()
					return port, log, nil
				}
			}
		}
		select {
		case <-exited:
			return 0, log, fmt.Errorf("merlin exited: %v", waitErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return 0, log, errors.New("merlin not ready")
}

// syncBuffer is a bytes.Buffer merlin's output goroutines and the test
// may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// meradm runs the CLI in-process and returns its output and error line.
func meradm(t *testing.T, port int, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCmd(&out, &errOut)
	root.SetArgs(joinOptionalValues(append([]string{"-H", "127.0.0.1", "-P", strconv.Itoa(port)}, args...)))
	err := root.Execute()
	if err != nil {
		err = fmt.Errorf("%s", errorLine(err))
	}
	return out.String(), err
}

// differs runs a diff that must find differences: exit code 1, as diff(1).
func differs(t *testing.T, port int, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCmd(&out, &errOut)
	root.SetArgs(joinOptionalValues(append([]string{"-H", "127.0.0.1", "-P", strconv.Itoa(port)}, args...)))
	if code := exitCode(root.Execute(), &errOut); code != exitFailure || errOut.Len() != 0 {
		t.Fatalf("meradm %s: exit code %d (%s), want 1 and no error", strings.Join(args, " "), code, errOut.String())
	}
	return out.String()
}

func ok(t *testing.T, port int, args ...string) string {
	t.Helper()
	out, err := meradm(t, port, args...)
	if err != nil {
		t.Fatalf("meradm %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func fails(t *testing.T, port int, want string, args ...string) {
	t.Helper()
	_, err := meradm(t, port, args...)
	if err == nil {
		t.Fatalf("meradm %s succeeded, want an error with %q", strings.Join(args, " "), want)
	}
	if msg := err.Error(); !strings.Contains(msg, want) || strings.Contains(msg, "\n") {
		t.Fatalf("meradm %s: error %q, want one line with %q", strings.Join(args, " "), msg, want)
	}
}

func TestMeradmCommands(t *testing.T) {
	p := startMerlin(t)
	ok(t, p, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "sh", "-b", "flag-1,flag-2")
	ok(t, p, "service", "add", "dns", "udp", "[2001:db8::53]:53", "-s", "mh", "-b", "mh-port", "-o", "-p", "600", "-M", "64", "--forward-method", "tunnel")
	ok(t, p, "service", "add", "marked", "fwmark", "7", "-s", "rr", "-p", "-M", "255.255.255.0")
	ok(t, p, "service", "edit", "web", "--bgp-link-bandwidth")
	if js := ok(t, p, "export"); !strings.Contains(js, "link_bandwidth: true") {
		t.Errorf("--bgp-link-bandwidth is not in the service:\n%s", js)
	}
	ok(t, p, "server", "add", "web", "198.19.0.2:8080", "-w", "10", "-f", "masq", "--health-endpoint", "http://:8080/health",
		"--health-period", "2s", "--health-timeout", "1s", "--health-up", "2", "--health-down", "3")
	ok(t, p, "server", "add", "web", "198.19.0.3:8080", "-f", "route", "-x", "100", "-y", "10")
	ok(t, p, "server", "add", "dns", "198.19.0.4:53", "--tun-type", "gue", "--tun-port", "6080", "--tun-csum")
	ok(t, p, "server", "add", "marked", "198.19.0.5:0", "-f", "route")

	list := ok(t, p, "list")
	for _, want := range []string{
		"TCP  198.18.0.10:80 sh (flag-1,flag-2) [web]",
		"UDP  [2001:db8::53]:53 mh (mh-port) persistent 600 mask 64 ops [dns]",
		"FWM  7 rr persistent 300 mask 24 [marked]",
		"-> 198.19.0.2:8080                          Masq    10     http://:8080/health every 2s timeout 1s up 2 down 3",
		"-> 198.19.0.4:53                            Tunnel  1",
	} {
		if !strings.Contains(list, want) {
			t.Errorf("list lacks %q:\n%s", want, list)
		}
	}

	// Edits change only what is given.
	ok(t, p, "service", "edit", "web", "-s", "wrr", "-b", "")
	ok(t, p, "server", "edit", "web", "198.19.0.2:8080", "-w", "0")
	ok(t, p, "service", "edit", "dns", "-p", "0", "--ops=false")
	var item struct {
		Service struct {
			Config struct {
				Scheduler string   `json:"scheduler"`
				Flags     []string `json:"flags"`
			} `json:"config"`
		} `json:"service"`
		Servers []struct {
			Config struct {
				Weight  *uint32 `json:"weight"`
				Forward string  `json:"forward"`
			} `json:"config"`
			HealthCheck struct {
				Endpoint string `json:"endpoint"`
			} `json:"health_check"`
		} `json:"servers"`
	}
	if err := json.Unmarshal([]byte(ok(t, p, "get", "web", "-o", "json")), &item); err != nil {
		t.Fatal(err)
	}
	if item.Service.Config.Scheduler != "wrr" || len(item.Service.Config.Flags) != 0 || item.Servers[0].Config.Weight == nil ||
		*item.Servers[0].Config.Weight != 0 || item.Servers[0].HealthCheck.Endpoint != "http://:8080/health" || item.Servers[0].Config.Forward != "MASQ" {
		t.Fatalf("after edits: %+v", item)
	}
	if dns := ok(t, p, "get", "dns"); !strings.Contains(dns, "UDP  [2001:db8::53]:53 mh (mh-port) [dns]") {
		t.Fatalf("persistence and ops not turned off:\n%s", dns)
	}
	var all struct {
		Items    []json.RawMessage `json:"items"`
		Revision string            `json:"revision"`
	}
	if err := json.Unmarshal([]byte(ok(t, p, "list", "-o", "json")), &all); err != nil || len(all.Items) != 3 || all.Revision == "" {
		t.Fatalf("list -o json: %v %+v", err, all)
	}
	if y := ok(t, p, "list", "-o", "yaml"); !strings.Contains(y, "scheduler: wrr") {
		t.Fatalf("list -o yaml:\n%s", y)
	}

	// Errors: one line naming the field, non-zero status.
	fails(t, p, "key.port", "service", "add", "x", "tcp", "198.18.0.20:0", "-s", "rr")
	fails(t, p, "invalid VIP:PORT", "service", "add", "x", "tcp", "198.18.0.20", "-s", "rr")
	fails(t, p, "invalid protocol", "service", "add", "x", "icmp", "198.18.0.20:1", "-s", "rr")
	fails(t, p, "config.scheduler", "service", "add", "x", "tcp", "198.18.0.20:1", "-s", "fastest")
	fails(t, p, `flag "sh-port" belongs to scheduler sh`, "service", "add", "x", "tcp", "198.18.0.20:1", "-s", "rr", "-b", "sh-port")
	fails(t, p, "already used by service \"web\"", "service", "add", "x", "tcp", "198.18.0.10:80", "-s", "rr")
	fails(t, p, "config.weight", "server", "add", "web", "198.19.0.9:80", "-w", "70000", "-f", "masq")
	fails(t, p, "config.lower_threshold", "server", "add", "web", "198.19.0.9:80", "-f", "masq", "-x", "1", "-y", "2")
	fails(t, p, "invalid forward method", "server", "add", "web", "198.19.0.9:80", "-f", "teleport")
	fails(t, p, "not found", "server", "edit", "web", "198.19.0.99:80", "-w", "1")
	fails(t, p, "not found", "service", "del", "nope")
	// ipvsadm's defaults: scheduler wlc, direct routing.
	ok(t, p, "service", "add", "x", "tcp", "198.18.0.20:1")
	ok(t, p, "server", "add", "x", "198.19.0.20:1")
	if l := ok(t, p, "list"); !strings.Contains(l, "TCP  198.18.0.20:1 wlc [x]") || !strings.Contains(l, "-> 198.19.0.20:1                            Route") {
		t.Fatalf("defaults not ipvsadm's:\n%s", l)
	}
	ok(t, p, "service", "del", "x")

	ok(t, p, "server", "del", "web", "198.19.0.3:8080")
	ok(t, p, "service", "del", "marked")
	if list := ok(t, p, "list"); strings.Contains(list, "marked") || strings.Contains(list, "198.19.0.3:8080") {
		t.Fatalf("deleted objects still listed:\n%s", list)
	}
	if out := ok(t, p, "completion", "bash"); !strings.Contains(out, "__meradm") {
		t.Fatalf("no bash completion")
	}
}

func TestMeradmDiffApplyRoundTrip(t *testing.T) {
	p := startMerlin(t)
	ok(t, p, "service", "add", "old", "tcp", "198.18.0.1:80", "-s", "rr")
	ok(t, p, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "wrr")
	ok(t, p, "server", "add", "web", "198.19.0.2:8080", "-w", "10", "-f", "masq")
	ok(t, p, "server", "add", "web", "198.19.0.3:8080", "-f", "masq")
	file := filepath.Join(t.TempDir(), "merlin.yaml")
	spec := `services:
- id: web
  protocol: tcp
  address: 198.18.0.10:80
  scheduler: sh
  flags: [sh-port]
  forward: masq
  health_check: {period: 2s, timeout: 1s, up: 2, down: 3}
  servers:
  - address: 198.19.0.2:8080
    weight: 5
    forward: masq
    health_check: {endpoint: "http://:8080/health"}
  - address: 198.19.0.4:8080
- id: v6
  protocol: udp
  address: "[2001:db8::53]:53"
  scheduler: mh
  persistence: 600
  persistence_netmask: 64
  one_packet: true
  servers:
  - address: "198.19.0.5:53"
    forward: tunnel
    tunnel: {type: gue, port: 6080, checksum: true}
- id: marked
  fwmark: 9
  family: ipv6
  scheduler: wlc
  servers:
  - {address: "[2001:db8:1::9]:0", forward: route, upper_threshold: 50}
`
	if err := os.WriteFile(file, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	before := ok(t, p, "list", "-o", "json")
	diff := differs(t, p, "diff", "-f", file, "--prune")
	for _, want := range []string{
		"~ service web: config.flags: (none) → sh-port, config.scheduler: wrr → sh, defaults.forward: (none) → masq",
		"+ service v6: UDP  [2001:db8::53]:53 mh persistent 600 mask 64 ops",
		"+ service marked: FWM  9 IPv6 wlc",
		"~ server web/198.19.0.2:8080: config.weight: 10 → 5, health_check.endpoint: (none) → http://:8080/health",
		"+ server web/198.19.0.4:8080 weight 1",
		"- server web/198.19.0.3:8080",
		"- service old",
	} {
		if !strings.Contains(diff, want) {
			t.Errorf("diff lacks %q:\n%s", want, diff)
		}
	}
	if after := ok(t, p, "list", "-o", "json"); after != before {
		t.Fatalf("diff changed the state")
	}
	// Without --prune nothing is deleted.
	if d := differs(t, p, "diff", "-f", file); strings.Contains(d, "- ") {
		t.Fatalf("diff without --prune deletes:\n%s", d)
	}
	ok(t, p, "apply", "-f", file, "--prune")
	if d := ok(t, p, "diff", "-f", file, "--prune"); strings.TrimSpace(d) != "no changes" {
		t.Fatalf("diff after apply:\n%s", d)
	}
	list := ok(t, p, "list")
	for _, want := range []string{"[web]", "[v6]", "[marked]", "198.19.0.4:8080", "[2001:db8:1::9]:0"} {
		if !strings.Contains(list, want) {
			t.Errorf("list after apply lacks %q:\n%s", want, list)
		}
	}
	if strings.Contains(list, "[old]") || strings.Contains(list, "198.19.0.3:8080") {
		t.Errorf("prune left objects:\n%s", list)
	}

	// A bad file is refused whole, naming the entry and the field.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	for content, want := range map[string]string{
		"services:\n- {id: a, protocol: tcp, address: 198.18.0.1:80, scheduler: nope}\n":                                                                "services[0] (a): config.scheduler",
		"services:\n- {id: a, protocol: tcp, address: 198.18.0.1:80, scheduler: rr, servers: [{address: 1.2.3.4}]}\n":                                   "services[0] (a).servers[0]: address",
		"services:\n- {id: a, protocol: tcp, address: 198.18.0.1:80, scheduler: rr, weight: 3}\n":                                                       `unknown field "weight"`,
		"services:\n- {id: a, protocol: tcp, address: 198.18.0.1:80, scheduler: rr}\n- {id: b, protocol: tcp, address: 198.18.0.1:80, scheduler: rr}\n": "also claimed by service \"a\"",
	} {
		if err := os.WriteFile(bad, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		fails(t, p, want, "apply", "-f", bad, "--prune")
	}
	if d := ok(t, p, "diff", "-f", file, "--prune"); strings.TrimSpace(d) != "no changes" {
		t.Fatalf("a refused file changed the state:\n%s", d)
	}
}

func TestMeradmMutualTLS(t *testing.T) {
	ca := testpki.NewCA(t, "merlin")
	srv := ca.Server(t, "merlin-server")
	client := ca.Client(t, "operator")
	other := testpki.NewCA(t, "other")
	stranger := other.Client(t, "stranger")
	p := startMerlin(t, "-tls-cert", srv.CertFile, "-tls-key", srv.KeyFile, "-tls-client-ca", ca.CertFile)

	// Plaintext, no client certificate, a certificate from another CA, and
	// trusting the wrong CA all fail; the right certificate works.
	if _, err := meradm(t, p, "--timeout", "3s", "list"); err == nil || !strings.Contains(err.Error(), "add --tls") {
		t.Fatalf("plaintext client against a TLS server: %v (want the hint to add --tls)", err)
	}
	if _, err := meradm(t, p, "--timeout", "3s", "--tls-ca", ca.CertFile, "list"); err == nil {
		t.Fatal("client without a certificate accepted")
	}
	if _, err := meradm(t, p, "--timeout", "3s", "--tls-ca", ca.CertFile, "--tls-cert", stranger.CertFile, "--tls-key", stranger.KeyFile, "list"); err == nil {
		t.Fatal("client certificate of another CA accepted")
	}
	if _, err := meradm(t, p, "--timeout", "3s", "--tls-ca", other.CertFile, "--tls-cert", client.CertFile, "--tls-key", client.KeyFile, "list"); err == nil {
		t.Fatal("server certificate accepted by a client trusting another CA")
	}
	tlsArgs := []string{"--tls-ca", ca.CertFile, "--tls-cert", client.CertFile, "--tls-key", client.KeyFile}
	ok(t, p, append(tlsArgs, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "rr")...)
	if out := ok(t, p, append(tlsArgs, "list")...); !strings.Contains(out, "[web]") {
		t.Fatalf("list over mTLS:\n%s", out)
	}
}

// TestMeradmRoles: with -api-readers and -api-writers, a reader's
// certificate may list but not write, a writer's may do both, a certificate
// the CA signed for no role gets nothing, and every write is in the audit
// log with its identity and peer.
func TestMeradmRoles(t *testing.T) {
	ca := testpki.NewCA(t, "merlin")
	srv := ca.Server(t, "merlin-server")
	p, log := startMerlinWithLog(t, "-tls-cert", srv.CertFile, "-tls-key", srv.KeyFile, "-tls-client-ca", ca.CertFile,
		"-api-readers", "grafana-bot", "-api-writers", "ops-alice,ops-bob")
	as := func(name string) []string {
		c := ca.Client(t, name)
		return []string{"--tls-ca", ca.CertFile, "--tls-cert", c.CertFile, "--tls-key", c.KeyFile}
	}
	reader, writer, nobody := as("grafana-bot"), as("ops-alice"), as("intern")
	bothCert := ca.Client(t, "grafana-bot", "ops-bob")
	both := []string{"--tls-ca", ca.CertFile, "--tls-cert", bothCert.CertFile, "--tls-key", bothCert.KeyFile}

	ok(t, p, append(writer, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "rr")...)
	ok(t, p, append(writer, "server", "add", "web", "198.19.0.2:80", "-f", "nat")...)
	if out := ok(t, p, append(reader, "list")...); !strings.Contains(out, "198.19.0.2:80") {
		t.Fatalf("reader's list:\n%s", out)
	}
	ok(t, p, append(reader, "status")...)
	fails(t, p, "/types.Merlin/CreateService needs the writer role", append(reader, "service", "add", "db", "tcp", "198.18.0.11:5432")...)
	fails(t, p, "/types.Merlin/DeleteServer needs the writer role", append(reader, "server", "del", "web", "198.19.0.2:80")...)
	fails(t, p, `/types.Merlin/ListPage needs the reader role; client "intern"`, append(nobody, "list")...)
	fails(t, p, "/types.Merlin/CreateService needs the writer role", append(nobody, "service", "add", "db", "tcp", "198.18.0.11:5432")...)
	fails(t, p, "/types.Merlin/Watch needs the reader role", append(nobody, "watch")...)
	if out := ok(t, p, append(writer, "list")...); !strings.Contains(out, "198.19.0.2:80") || strings.Contains(out, "5432") {
		t.Fatalf("refused writes changed the state:\n%s", out)
	}

	// A certificate whose CN is a reader but whose DNS SAN is a writer
	// writes, and its audit line names the name that was granted.
	ok(t, p, append(both, "service", "add", "db", "tcp", "198.18.0.11:5432", "-s", "rr")...)

	// Every attempt to change something is one audit line: granted or
	// refused, with the identity that was granted or refused; reads none.
	audit := ""
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, "msg=audit") {
			audit += line + "\n"
		}
	}
	for _, want := range []string{
		`method=/types.Merlin/CreateService identity=ops-alice peer=127.0.0.1:`,
		`method=/types.Merlin/CreateServer identity=ops-alice`,
		`198.19.0.2`,
		`method=/types.Merlin/CreateService identity=grafana-bot,localhost peer=127.0.0.1:`,
		`method=/types.Merlin/DeleteServer identity=grafana-bot,localhost`,
		`method=/types.Merlin/CreateService identity=intern,localhost`,
		`method=/types.Merlin/CreateService identity=ops-bob peer=`,
	} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit log lacks %s:\n%s", want, audit)
		}
	}
	if n := strings.Count(audit, "code=PermissionDenied"); n != 3 || strings.Count(audit, "\n") != 6 || strings.Contains(audit, "List") || strings.Contains(audit, "Watch") {
		t.Errorf("audit log: want 3 granted writes, 3 refused (%d), no reads:\n%s", n, audit)
	}
	if !strings.Contains(log.String(), `msg="permission denied" method=/types.Merlin/ListPage identity=intern`) {
		t.Errorf("denial not logged:\n%s", log)
	}
}

// TestMerlinExternalEtcdOverMutualTLS points merlin at Debian's etcd that
// requires client certificates (-store-endpoints with -store-tls-*).
func TestMerlinExternalEtcdOverMutualTLS(t *testing.T) {
	ca := testpki.NewCA(t, "etcd")
	srv, probe, merlinCert := ca.Server(t, "etcd-server"), ca.Client(t, "probe"), ca.Client(t, "merlin")
	etcd := etcdtest.StartTLS(t, etcdtest.TLSFiles{CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCA: ca.CertFile,
		ProbeCert: probe.CertFile, ProbeKey: probe.KeyFile, ServerCA: ca.CertFile})
	p := startMerlin(t, "-store-endpoints", etcd.ClientURL, "-store-prefix", "/lb",
		"-store-tls-ca", ca.CertFile, "-store-tls-cert", merlinCert.CertFile, "-store-tls-key", merlinCert.KeyFile)
	ok(t, p, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "rr")
	ok(t, p, "server", "add", "web", "198.19.0.2:80", "-f", "route")
	if out := ok(t, p, "list"); !strings.Contains(out, "198.19.0.2:80") {
		t.Fatalf("list through external etcd:\n%s", out)
	}
}

func TestMeradmVersion(t *testing.T) {
	var out bytes.Buffer
	root := newRootCmd(&out, &out)
	root.SetArgs([]string{"--version"})
	if err := root.Execute(); err != nil || !strings.HasPrefix(out.String(), "meradm version ") || !strings.Contains(out.String(), "go1.") {
		t.Fatalf("meradm --version: %v: %q", err, out.String())
	}
}

// Exit codes: 0 ok, 1 failure, 2 usage; the environment sets the address.
func TestMeradmExitCodesAndEnvironment(t *testing.T) {
	p := startMerlin(t)
	run := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		root := newRootCmd(&out, &errOut)
		root.SetArgs(joinOptionalValues(args)) // as main does
		return exitCode(root.Execute(), &errOut), out.String() + errOut.String()
	}
	t.Setenv("MERLIN_HOST", "127.0.0.1")
	t.Setenv("MERLIN_PORT", strconv.Itoa(p))
	if code, out := run("service", "add", "web", "tcp", "198.18.0.10:80"); code != exitOK {
		t.Fatalf("service add through MERLIN_HOST/MERLIN_PORT: %d %s", code, out)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"service", "add", "web", "tcp", "198.18.0.11:80"}, exitFailure, "already"},
		{[]string{"service", "add", "web"}, exitUsage, "meradm service add"},
		{[]string{"list", "--no-such-flag"}, exitUsage, "no-such-flag"},
		{[]string{"no-such-command"}, exitUsage, "unknown command"},
		{[]string{"service", "frob", "web"}, exitUsage, `unknown command "frob" for "meradm service"`},
		{[]string{"server", "remove", "web"}, exitUsage, "unknown command"},
		// A negative number is a value, refused by name — not a flag "-5".
		{[]string{"service", "edit", "web", "-p", "-5"}, exitFailure, `-p/--persistent "-5": want a timeout in seconds`},
		{[]string{"server", "add", "web", "198.19.0.1:80", "-w", "-1"}, exitFailure, "weight"},
	} {
		if code, out := run(tc.args...); code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("meradm %s: exit %d %q, want %d with %q", strings.Join(tc.args, " "), code, out, tc.code, tc.want)
		}
	}
	if code, out := run("--tls", "--timeout", "3s", "list"); code != exitFailure || !strings.Contains(out, "drop --tls") {
		t.Errorf("a TLS client against a plain-text server: exit %d %q (want the hint to drop --tls)", code, out)
	}
	t.Setenv("MERLIN_PORT", "seventy")
	if code, out := run("list"); code != exitUsage || !strings.Contains(out, "MERLIN_PORT") {
		t.Errorf("a bad MERLIN_PORT: exit %d %q", code, out)
	}
}

// export writes exactly what apply reads: export → apply on an empty
// cluster → export is byte for byte the same.
func TestMeradmExportApplyExport(t *testing.T) {
	a := startMerlin(t)
	ok(t, a, "service", "add", "web", "tcp", "198.18.0.10:80", "-s", "sh", "-b", "sh-port", "--forward-method", "masq",
		"--health-endpoint", "http://:8080/health", "--health-period", "2s", "--health-timeout", "1s", "--health-up", "2", "--health-down", "3")
	ok(t, a, "service", "add", "dns", "udp", "[2001:db8::53]:53", "-s", "mh", "-b", "mh-port", "-o", "-p", "600", "-M", "64", "--forward-method", "tunnel")
	ok(t, a, "service", "add", "marked", "fwmark", "7", "-s", "rr", "-p", "-M", "255.255.255.0", "-6")
	ok(t, a, "server", "add", "web", "198.19.0.2:8080", "-w", "10", "--health-endpoint", "", "-x", "100", "-y", "10")
	ok(t, a, "server", "add", "web", "198.19.0.3:8080", "-w", "0", "--slow-start", "30s", "--startup", "down")
	ok(t, a, "server", "add", "dns", "198.19.0.4:53", "--tun-type", "gue", "--tun-port", "6080", "--tun-csum")
	ok(t, a, "server", "add", "marked", "[2001:db8::5]:0", "-f", "route")
	first := ok(t, a, "export")
	file := filepath.Join(t.TempDir(), "backup.yaml")
	if err := os.WriteFile(file, []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}
	b := startMerlin(t)
	ok(t, b, "apply", "-f", file)
	if second := ok(t, b, "export"); second != first {
		t.Fatalf("export after apply differs:\n%s\nfirst:\n%s", second, first)
	}
	if d := ok(t, a, "diff", "-f", file, "--prune"); strings.TrimSpace(d) != "no changes" {
		t.Fatalf("the export differs from what it was taken from:\n%s", d)
	}
	if !strings.Contains(first, "endpoint: \"\"") || !strings.Contains(first, "startup: down") {
		t.Fatalf("export lost a field:\n%s", first)
	}
}

// An apply --prune that would delete many services, or all of them, needs
// --yes (no terminal here to ask at); nothing is deleted without it.
func TestMeradmPruneNeedsYes(t *testing.T) {
	p := startMerlin(t)
	for i := range 5 {
		ok(t, p, "service", "add", fmt.Sprintf("s%d", i), "tcp", fmt.Sprintf("198.18.0.%d:80", 10+i))
	}
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(empty, []byte("services: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fails(t, p, "apply would delete 5 of the 5 services; nothing changed: re-run with --yes", "apply", "-f", empty, "--prune")
	if l := ok(t, p, "list"); strings.Count(l, "TCP ") != 5 {
		t.Fatalf("services deleted without --yes:\n%s", l)
	}
	ok(t, p, "apply", "-f", empty, "--prune", "--yes")
	if l := ok(t, p, "list"); strings.Contains(l, "TCP ") {
		t.Fatalf("services left after --yes:\n%s", l)
	}
}

// Completion offers service IDs and server addresses from the API.
func TestMeradmCompletesFromTheAPI(t *testing.T) {
	p := startMerlin(t)
	ok(t, p, "service", "add", "web", "tcp", "198.18.0.10:80")
	ok(t, p, "service", "add", "api", "tcp", "198.18.0.11:80")
	ok(t, p, "server", "add", "web", "198.19.0.2:8080")
	ok(t, p, "server", "add", "web", "198.19.0.3:8080")
	if out := ok(t, p, "__complete", "service", "del", "w"); !strings.HasPrefix(out, "web\n:4") || strings.Contains(out, "api") {
		t.Fatalf("service IDs: %q", out)
	}
	if out := ok(t, p, "__complete", "server", "edit", "web", ""); !strings.HasPrefix(out, "198.19.0.2:8080\n198.19.0.3:8080\n:4") {
		t.Fatalf("server addresses: %q", out)
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "state.yaml")
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// Every valid target state is reachable: a VIP swap, a move from IPv4 to
// IPv6 with the servers, a VIP moved to a new service while the old one is
// pruned.
func TestMeradmApplyReachesAnyValidState(t *testing.T) {
	p := startMerlin(t)
	ok(t, p, "apply", "-f", writeFile(t, `services:
- {id: a, protocol: tcp, address: "198.18.0.1:80", scheduler: rr, forward: masq, servers: [{address: "198.19.0.1:80"}]}
- {id: b, protocol: tcp, address: "198.18.0.2:80", scheduler: rr, forward: masq, servers: [{address: "198.19.0.2:80"}]}
- {id: v4, protocol: tcp, address: "198.18.0.3:80", scheduler: rr, forward: masq, servers: [{address: "198.19.0.3:80", weight: 3}]}
- {id: old, protocol: tcp, address: "198.18.0.4:80", scheduler: rr, forward: masq}
`))
	target := writeFile(t, `services:
- {id: a, protocol: tcp, address: "198.18.0.2:80", scheduler: rr, forward: masq, servers: [{address: "198.19.0.1:80"}]}
- {id: b, protocol: tcp, address: "198.18.0.1:80", scheduler: rr, forward: masq, servers: [{address: "198.19.0.2:80"}]}
- {id: v4, protocol: tcp, address: "[2001:db8::3]:80", scheduler: rr, forward: masq, servers: [{address: "[2001:db8::13]:80", weight: 3}]}
- {id: new, protocol: tcp, address: "198.18.0.4:80", scheduler: wlc, forward: masq}
`)
	// A swap, a move to IPv6 with its server, a VIP handed over while its
	// holder goes: in one etcd transaction.
	if out := ok(t, p, "apply", "-f", target, "--prune", "--yes"); !strings.Contains(out, "changes in one transaction") {
		t.Fatalf("apply did not use one transaction:\n%s", out)
	}
	if d := ok(t, p, "diff", "-f", target, "--prune"); strings.TrimSpace(d) != "no changes" {
		t.Fatalf("not reached:\n%s", d)
	}
}

// apply checks the whole file against the current state before it writes
// anything, and reports every problem at once.
func TestMeradmApplyValidatesFirst(t *testing.T) {
	p := startMerlin(t)
	ok(t, p, "service", "add", "keep", "tcp", "198.18.0.9:80")
	before := ok(t, p, "export")
	// Two bad entries: both named.
	_, err := meradm(t, p, "apply", "-f", writeFile(t, `services:
- {id: x1, protocol: tcp, address: "198.18.0.1:80", scheduler: nope}
- {id: y1, protocol: tcp, address: "198.18.0.2:80", scheduler: rr, servers: [{address: "198.19.0.1:80", weight: 70000, forward: masq}]}
`))
	if err == nil || !strings.Contains(err.Error(), "services[0] (x1)") || !strings.Contains(err.Error(), "services[1] (y1).servers[0]") {
		t.Fatalf("want both problems: %v", err)
	}
	// A VIP held by a service the file leaves alone (no --prune): refused
	// before the first write, though the conflict is the last entry.
	_, err = meradm(t, p, "apply", "-f", writeFile(t, `services:
- {id: a, protocol: tcp, address: "198.18.0.1:80", scheduler: rr}
- {id: b, protocol: tcp, address: "198.18.0.9:80", scheduler: rr}
`))
	if err == nil || !strings.Contains(err.Error(), `address tcp/198.18.0.9:80 is held by service "keep"`) {
		t.Fatalf("conflict: %v", err)
	}
	if after := ok(t, p, "export"); after != before {
		t.Fatalf("a refused apply changed something:\n%s", after)
	}
}

// A large file is applied whole: each request has --timeout, the apply
// as a whole none.
func TestMeradmApplyLargeFile(t *testing.T) {
	p := startMerlin(t)
	var b strings.Builder
	b.WriteString("services:\n")
	const n = 1500
	for i := range n {
		fmt.Fprintf(&b, "- {id: s%04d, protocol: tcp, address: \"198.18.%d.%d:80\", scheduler: rr, forward: masq, servers: [{address: \"198.19.0.1:%d\"}]}\n", i, i/250, i%250+1, 1000+i)
	}
	out := ok(t, p, "--timeout", "5s", "apply", "-f", writeFile(t, b.String()))
	if !strings.Contains(out, fmt.Sprintf("applied %d changes\n", 2*n)) { // one by one: more than a transaction holds
		t.Fatalf("apply: %s", out[max(0, len(out)-300):])
	}
}

// The README's quick start works as written: its meradm commands, run
// against a merlin started as it says, print the listing it shows.
func TestReadmeQuickStart(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)
	i := strings.Index(section, "## Quick start")
	if i < 0 {
		t.Fatal("README has no quick start")
	}
	section = section[i:]
	blocks := strings.Split(section, "```")
	if len(blocks) < 4 {
		t.Fatal("quick start: want a command block and an output block")
	}
	commands, shown := blocks[1], strings.TrimPrefix(blocks[3], "\n")
	if !strings.Contains(commands, "bin/merlin -data-dir /tmp/merlin -reconcile=false &") {
		t.Fatalf("the quick start no longer starts merlin API-only:\n%s", commands)
	}
	p := startMerlin(t)
	var last string
	for _, line := range strings.Split(strings.ReplaceAll(commands, "\\\n", " "), "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "bin/meradm" {
			continue
		}
		last = ok(t, p, f[1:]...)
	}
	if strings.TrimSpace(last) != strings.TrimSpace(shown) {
		t.Fatalf("the last command prints\n%s\nthe README shows\n%s", last, shown)
	}
}

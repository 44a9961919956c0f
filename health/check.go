// Package health checks real servers: HTTP and HTTPS (method, path, Host,
// expected status codes, body match, TLS name and verification), TCP
// connect and UDP request/reply, with rise/fall counting in a Monitor that
// runs each distinct check once. Other kinds plug in as a KindProber (gRPC:
// package health/grpcprobe; exec: health/execprobe, only where a node
// enables it), so this package needs only the standard library and x/sys.
// Checks are values: two servers with the same target and check share one
// prober. It needs no privileges.
package health

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unique"
)

// Kind of check.
type Kind string

// Kinds of checks.
const (
	HTTP  Kind = "http"
	HTTPS Kind = "https"
	TCP   Kind = "tcp"
	UDP   Kind = "udp"
	GRPC  Kind = "grpc"
	Exec  Kind = "exec"
)

// Check is one health check of one target. It is a comparable value: the
// Monitor keys checks by value, so equal checks share one prober. What an
// HTTP, gRPC, UDP or exec probe sends and expects is interned (Probe), so
// that a node's 100,000 checks share a few copies of it and each check,
// held by the plan, the monitor and its runner, stays small.
type Check struct {
	Kind   Kind
	Target netip.AddrPort           // what is probed (the server, or the address/port the endpoint names)
	Probe  unique.Handle[ProbeSpec] // ProbeOf; the zero handle is ProbeSpec{}
	// A check through the VIP (Target is the VIP): Mark is set on the
	// probe's socket, so that the node's private IPVS service for the
	// server forwards it by the server's own path; the probe leaves from
	// the node's address toward Via (the server), not from the VIP, which
	// the node holds too. Linux only.
	Mark uint32
	Via  netip.Addr

	Interval, Timeout time.Duration
	Rise, Fall        int
}

// ProbeSpec is what a probe sends and expects beyond its target.
type ProbeSpec struct {
	// HTTP(S)
	Method       string // default GET
	Path         string // default /
	Host         string // Host header (and default TLS server name)
	ExpectStatus string // comma-separated codes and ranges, e.g. "200,204,300-399"; default 200-399
	ExpectBody   string // substring the body must contain
	TLSVerify    bool   // verify the server certificate (HTTPS, gRPC over TLS)
	TLSName      string // server name to verify against
	// gRPC: the service name asked about ("" is the whole server); TLS when TLSVerify or TLSName is set.
	GRPCService string
	// UDP: send UDPSend, expect a reply containing UDPExpect (any reply when empty).
	UDPSend, UDPExpect string
	// Exec: the program and its arguments (space-separated; see
	// health/execprobe); MERLIN_TARGET_IP and MERLIN_TARGET_PORT are in
	// its environment.
	Command string
}

// ProbeOf interns p: equal specs give equal handles, ProbeSpec{} the zero one.
func ProbeOf(p ProbeSpec) unique.Handle[ProbeSpec] {
	if p == (ProbeSpec{}) {
		return unique.Handle[ProbeSpec]{}
	}
	return unique.Make(p)
}

// Spec is c's probe spec.
func (c Check) Spec() ProbeSpec {
	if c.Probe == (unique.Handle[ProbeSpec]{}) {
		return ProbeSpec{}
	}
	return c.Probe.Value()
}

// Identity is what a check probes; a change that keeps it keeps the state.
func (c Check) Identity() string {
	id := string(c.Kind) + " " + c.Target.String() + " " + c.Spec().Command
	if c.Mark != 0 {
		id += fmt.Sprintf(" via %s mark %#x", c.Via, c.Mark)
	}
	return id
}

func (c Check) String() string {
	switch c.Kind {
	case HTTP, HTTPS:
		return fmt.Sprintf("%s://%s%s", c.Kind, c.Target, c.Spec().Path)
	case Exec:
		return "exec " + c.Spec().Command
	}
	if c.Mark != 0 {
		return fmt.Sprintf("%s://%s via %s", c.Kind, c.Target, c.Via)
	}
	return fmt.Sprintf("%s://%s", c.Kind, c.Target)
}

// Failure reasons, for metrics.
const (
	ReasonTimeout = "timeout"
	ReasonRefused = "refused"
	ReasonStatus  = "status"
	ReasonBody    = "body"
	ReasonTLS     = "tls"
	ReasonReset   = "reset"
	ReasonExit    = "exit"
	ReasonOther   = "other"
)

// ProbeError is a failed probe with a bounded reason.
type ProbeError struct {
	Reason string
	Err    error
}

func (e *ProbeError) Error() string { return e.Err.Error() }
func (e *ProbeError) Unwrap() error { return e.Err }

func fail(reason string, format string, args ...any) error {
	return &ProbeError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// classify names the reason of a network error.
func classify(err error) error {
	var pe *ProbeError
	if errors.As(err, &pe) {
		return err
	}
	var ne net.Error
	var tlsErr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return &ProbeError{Reason: ReasonTimeout, Err: err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &ProbeError{Reason: ReasonRefused, Err: err}
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &ProbeError{Reason: ReasonReset, Err: err}
	case errors.As(err, &tlsErr), errors.As(err, &recErr):
		return &ProbeError{Reason: ReasonTLS, Err: err}
	}
	return &ProbeError{Reason: ReasonOther, Err: err}
}

// Reason of a probe error.
func Reason(err error) string {
	var pe *ProbeError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	return ReasonOther
}

// Prober runs single probes. Every probe opens a fresh connection, as a
// new client would, and closes it with a reset (see probeConn.reset).
type Prober struct {
	// RootCAs verifies servers' certificates (nil: the system's roots).
	RootCAs  *x509.CertPool
	kinds    map[Kind]KindProber
	disabled map[Kind]string // why a kind without a prober is not run
}

// KindProber probes the checks of a kind this package does not implement
// itself, within the deadline of ctx.
type KindProber interface {
	Probe(ctx context.Context, c Check) error
}

// NewProber returns a prober.
func NewProber() *Prober { return &Prober{kinds: map[Kind]KindProber{}, disabled: map[Kind]string{}} }

// Handle makes p probe checks of kind k with kp. Call it before probing.
func (p *Prober) Handle(k Kind, kp KindProber) { p.kinds[k] = kp }

// runs: p can probe checks of kind k.
func (p *Prober) runs(k Kind) bool {
	switch k {
	case TCP, HTTP, HTTPS, UDP:
		return true
	}
	return p.kinds[k] != nil
}

// notRun says why checks of kind k are not run.
func (p *Prober) notRun(k Kind) string {
	if why := p.disabled[k]; why != "" {
		return why
	}
	return fmt.Sprintf("%s checks are not run on this node: it has no prober for them", k)
}

// Probe runs one probe within c.Timeout; nil means healthy.
func (p *Prober) Probe(ctx context.Context, c Check) error {
	var err error
	switch c.Kind {
	case TCP:
		var conn *probeConn
		if conn, err = dialProbe(ctx, c, time.Now().Add(c.Timeout)); err == nil {
			conn.reset()
		}
	case HTTP, HTTPS:
		err = p.probeHTTP(ctx, c)
	case UDP:
		ctx, cancel := context.WithTimeout(ctx, c.Timeout)
		defer cancel()
		err = probeUDP(ctx, c)
	default:
		kp := p.kinds[c.Kind]
		if kp == nil {
			return fail(ReasonOther, "%s", p.notRun(c.Kind))
		}
		ctx, cancel := context.WithTimeout(ctx, c.Timeout)
		defer cancel()
		err = kp.Probe(ctx, c)
	}
	if err != nil {
		return classify(err)
	}
	return nil
}

// probeHTTP sends one HTTP/1.1 request with "Connection: close". Without a
// body to match, only the status line is read.
func (p *Prober) probeHTTP(ctx context.Context, c Check) error {
	req, err := httpRequest(c)
	if err != nil {
		return err
	}
	conn, err := dialProbe(ctx, c, time.Now().Add(c.Timeout))
	if err != nil {
		return err
	}
	defer conn.reset()
	var rw io.ReadWriter = conn
	if c.Kind == HTTPS {
		name := orDefault(c.Spec().TLSName, c.Spec().Host)
		tc := tls.Client(conn, &tls.Config{ServerName: name, InsecureSkipVerify: !c.Spec().TLSVerify, RootCAs: p.RootCAs, MinVersion: tls.VersionTLS12}) //nolint:gosec // verification is the check's choice
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		rw = tc
	}
	if _, err := rw.Write(req); err != nil {
		return err
	}
	var code int
	if c.Spec().ExpectBody == "" {
		if code, err = readStatus(rw); err != nil {
			return err
		}
	} else {
		resp, err := http.ReadResponse(bufio.NewReaderSize(rw, 4096), &http.Request{Method: orDefault(c.Spec().Method, http.MethodGet)})
		if err != nil {
			return err
		}
		code = resp.StatusCode
		if statusExpected(c.Spec().ExpectStatus, code) {
			body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if err != nil {
				return err
			}
			if !bytes.Contains(body, []byte(c.Spec().ExpectBody)) {
				return fail(ReasonBody, "body does not contain %q", c.Spec().ExpectBody)
			}
		}
	}
	if !statusExpected(c.Spec().ExpectStatus, code) {
		return fail(ReasonStatus, "status %d, want %s", code, orDefault(c.Spec().ExpectStatus, "200-399"))
	}
	return nil
}

// httpRequest is the HTTP/1.1 request a check sends.
func httpRequest(c Check) ([]byte, error) {
	method := orDefault(c.Spec().Method, http.MethodGet)
	path := orDefault(c.Spec().Path, "/")
	host := c.Spec().Host
	if host == "" {
		host = c.Target.String()
	}
	if !headerSafe(method) || !headerSafe(path) || !headerSafe(host) {
		return nil, fail(ReasonOther, "method, path or host has spaces or control characters")
	}
	req := make([]byte, 0, 128+len(path)+len(host))
	req = append(append(append(req, method...), ' '), path...)
	req = append(append(append(req, " HTTP/1.1\r\nHost: "...), host...), "\r\nUser-Agent: merlin-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"...)
	return req, nil
}

// readStatus reads an HTTP/1.x status line and returns its code.
func readStatus(r io.Reader) (int, error) {
	var buf [256]byte
	n := 0
	for {
		m, err := r.Read(buf[n:])
		n += m
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			return parseStatusLine(buf[:i])
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if n == len(buf) {
			return 0, fail(ReasonOther, "status line longer than %d bytes", len(buf))
		}
	}
}

func parseStatusLine(line []byte) (int, error) {
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, fail(ReasonOther, "not an HTTP/1 status line: %q", bytes.TrimSpace(line))
	}
	code := 0
	for _, d := range line[9:12] {
		if d < '0' || d > '9' {
			return 0, fail(ReasonOther, "bad status code in %q", bytes.TrimSpace(line))
		}
		code = code*10 + int(d-'0')
	}
	return code, nil
}

// headerSafe: no spaces or control characters, which would split the request line or a header.
func headerSafe(s string) bool {
	for i := range len(s) {
		if s[i] <= ' ' || s[i] == 0x7f {
			return false
		}
	}
	return s != ""
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// statusExpected matches a code against "200,204,300-399" (default 200-399).
func statusExpected(spec string, code int) bool {
	if spec == "" {
		return code >= 200 && code < 400
	}
	for _, part := range strings.Split(spec, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		l, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		h := l
		if isRange {
			if h, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		if code >= l && code <= h {
			return true
		}
	}
	return false
}

func probeUDP(ctx context.Context, c Check) error {
	d, err := PathDialer(c, "udp")
	if err != nil {
		return err
	}
	conn, err := d.DialContext(ctx, "udp", c.Target.String())
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	payload := c.Spec().UDPSend
	if payload == "" {
		payload = "merlin health check\n"
	}
	if _, err := conn.Write([]byte(payload)); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		return err // a closed port answers ICMP unreachable: ECONNREFUSED
	}
	if c.Spec().UDPExpect != "" && !bytes.Contains(buf[:n], []byte(c.Spec().UDPExpect)) {
		return fail(ReasonBody, "reply does not contain %q", c.Spec().UDPExpect)
	}
	return nil
}

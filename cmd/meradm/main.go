// Command meradm administers a merlin cluster through its gRPC API: the
// original Merlin commands (`meradm -H host list`, `service add ...`,
// `server add ...`), ipvsadm-like flags and listing, and a declarative
// `diff`/`apply -f FILE`. It needs no privileges.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/merlin-ipvs/merlin/internal/tlsconfig"
	"github.com/merlin-ipvs/merlin/internal/version"
	"github.com/merlin-ipvs/merlin/types"
)

type globals struct {
	host          string
	port          uint16
	timeout       time.Duration
	tlsCA         string
	tlsCert       string
	tlsKey        string
	tlsServerName string
	useTLS        bool
	out           io.Writer
}

func main() {
	root := newRootCmd(os.Stdout, os.Stderr)
	root.SetArgs(joinOptionalValues(os.Args[1:]))
	os.Exit(exitCode(root.Execute(), os.Stderr))
}

// Exit codes, as diff(1) and most tools: 0 success, 1 failure (for diff:
// there are differences), 2 a usage error.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a command line that cannot be run as written.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// errDifferences: diff found changes to make (and printed them).
var errDifferences = errors.New("there are differences")

func exitCode(err error, stderr io.Writer) int {
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errDifferences):
		return exitFailure
	case errors.As(err, &ue), strings.HasPrefix(err.Error(), "unknown command"):
		fmt.Fprintln(stderr, "meradm:", errorLine(err))
		return exitUsage
	}
	fmt.Fprintln(stderr, "meradm:", errorLine(err))
	return exitFailure
}

// usageErrors makes every command's argument and flag errors usage errors.
func usageErrors(c *cobra.Command) {
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return usageError{fmt.Errorf("%s: %w", cmd.CommandPath(), err)}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		usageErrors(sub)
	}
}

// envFlags are the global flags an environment variable can set (the
// command line wins), so a shell can point meradm at a cluster once.
var envFlags = map[string]string{
	"host": "MERLIN_HOST", "port": "MERLIN_PORT", "timeout": "MERLIN_TIMEOUT", "tls": "MERLIN_TLS",
	"tls-ca": "MERLIN_TLS_CA", "tls-cert": "MERLIN_TLS_CERT", "tls-key": "MERLIN_TLS_KEY", "tls-server-name": "MERLIN_TLS_SERVER_NAME",
}

func flagsFromEnv(cmd *cobra.Command) error {
	for name, env := range envFlags {
		v, ok := os.LookupEnv(env)
		f := cmd.Flags().Lookup(name)
		if !ok || f == nil || f.Changed {
			continue
		}
		if err := f.Value.Set(v); err != nil {
			return usageError{fmt.Errorf("%s=%q (for --%s): %w", env, shorten(v), name, err)}
		}
	}
	return nil
}

func shorten(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// joinOptionalValues lets `-p 600` mean `-p=600` as in ipvsadm: the
// persistence timeout is optional, so the flag parser would otherwise
// take 600 for an argument.
func joinOptionalValues(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if (a == "-p" || a == "--persistent") && i+1 < len(args) {
			if _, err := strconv.ParseInt(args[i+1], 10, 64); err == nil { // negative too: refused by name, not taken for a flag
				out = append(out, a+"="+args[i+1])
				i++
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// errorLine is one clear line: a gRPC status shows only its message, with
// a hint where the message alone would puzzle.
func errorLine(err error) string {
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	} else if se := (interface{ GRPCStatus() *status.Status })(nil); errors.As(err, &se) {
		msg = se.GRPCStatus().Message()
	}
	switch {
	case strings.Contains(msg, "error reading server preface") || strings.Contains(msg, "http2: frame too large"):
		msg += " (the server speaks TLS: add --tls, with --tls-ca if its certificate is not from a system CA)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		msg += " (the server speaks plain text: drop --tls and the --tls-* flags)"
	}
	return msg
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{out: stdout}
	root := &cobra.Command{
		Use:           "meradm",
		Short:         "admin tool for merlin - distributed IPVS manager",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Read().String(),
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	f := root.PersistentFlags()
	f.StringVarP(&g.host, "host", "H", "localhost", "merlin host to connect to")
	f.Uint16VarP(&g.port, "port", "P", 4282, "merlin port to connect to")
	f.DurationVar(&g.timeout, "timeout", 10*time.Second, "client timeout")
	f.BoolVar(&g.useTLS, "tls", false, "connect with TLS (implied by the other --tls-* flags)")
	f.StringVar(&g.tlsCA, "tls-ca", "", "CA certificate (PEM) that the server's certificate must chain to")
	f.StringVar(&g.tlsCert, "tls-cert", "", "client certificate (PEM) for mutual TLS")
	f.StringVar(&g.tlsKey, "tls-key", "", "client key (PEM) for mutual TLS")
	f.StringVar(&g.tlsServerName, "tls-server-name", "", "name to verify the server's certificate against (default: --host)")
	root.AddCommand(listCmd(g), getCmd(g), serviceCmd(g), serverCmd(g), diffCmd(g, false), diffCmd(g, true), exportCmd(g), watchCmd(g), statusCmd(g), confirmCmd(g), nodeCmd(g), bgpCmd(g))
	root.AddCommand(manCmd(root))
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error { return flagsFromEnv(cmd) }
	usageErrors(root)
	return root
}

// client connects to merlin and runs fn with a context bounded by --timeout.
func (g *globals) client(fn func(ctx context.Context, c types.MerlinClient) error) error {
	return g.clientFor(g.timeout, fn)
}

// call runs one request with its own --timeout.
func call[T any](ctx context.Context, g *globals, fn func(context.Context) (T, error)) (T, error) {
	if g.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	return fn(ctx)
}

func (g *globals) clientFor(timeout time.Duration, fn func(ctx context.Context, c types.MerlinClient) error) error {
	creds := insecure.NewCredentials()
	if g.useTLS || g.tlsCA != "" || g.tlsCert != "" || g.tlsKey != "" {
		name := g.tlsServerName
		if name == "" {
			name = g.host
		}
		tc, err := tlsconfig.Client(g.tlsCA, g.tlsCert, g.tlsKey, name)
		if err != nil {
			return err
		}
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(net.JoinHostPort(g.host, strconv.Itoa(int(g.port))), append(types.WithRevisions(), grpc.WithTransportCredentials(creds))...)
	if err != nil {
		return fmt.Errorf("connect to %s:%d: %w", g.host, g.port, err)
	}
	defer conn.Close()
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	err = fn(ctx, types.NewMerlinClient(conn))
	if timeout > 0 && ctx.Err() == context.DeadlineExceeded && (status.Code(err) == codes.DeadlineExceeded || status.Code(err) == codes.Canceled) {
		return fmt.Errorf("no answer from merlin at %s within --timeout %s", net.JoinHostPort(g.host, strconv.Itoa(int(g.port))), timeout)
	}
	return err
}

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
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
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
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "meradm:", errorLine(err))
		os.Exit(1)
	}
}

// joinOptionalValues lets `-p 600` mean `-p=600` as in ipvsadm: the
// persistence timeout is optional, so the flag parser would otherwise
// take 600 for an argument.
func joinOptionalValues(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if (a == "-p" || a == "--persistent") && i+1 < len(args) {
			if _, err := strconv.ParseUint(args[i+1], 10, 32); err == nil {
				out = append(out, a+"="+args[i+1])
				i++
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// errorLine is one clear line: a gRPC status shows only its message.
func errorLine(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Message()
	}
	return err.Error()
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
	root.AddCommand(listCmd(g), getCmd(g), serviceCmd(g), serverCmd(g), diffCmd(g, false), diffCmd(g, true), watchCmd(g), statusCmd(g), confirmCmd(g))
	return root
}

// client connects to merlin and runs fn with a context bounded by --timeout.
func (g *globals) client(fn func(ctx context.Context, c types.MerlinClient) error) error {
	return g.clientFor(g.timeout, fn)
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
	return fn(ctx, types.NewMerlinClient(conn))
}

// Command merlin is the merlin node daemon: it serves the Merlin gRPC API
// on top of the desired state in etcd — an external cluster given with
// -store-endpoints, or an etcd embedded in its data directory — and makes
// this node's kernel IPVS table match that state. Reconciling IPVS needs
// CAP_NET_ADMIN and a kernel with ip_vs; -reconcile=false serves only the API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/internal/sdnotify"
	"github.com/merlin-ipvs/merlin/internal/version"
)

func main() {
	bgp.RunChildIfAsked() // this process may be merlin's BGP speaker
	if printDocs(os.Args[1:]) {
		return
	}
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "merlin:", err)
		os.Exit(2)
	}
	switch {
	case o.version:
		fmt.Println("merlin version", version.Read())
		return
	case o.counterFlags.remove:
		if err := xdpstats.Remove(o.counterFlags.pinDir); err != nil {
			fmt.Fprintln(os.Stderr, "merlin: remove counters:", err)
			os.Exit(1)
		}
		fmt.Println("merlin: eBPF counters detached, pins under", o.counterFlags.pinDir, "removed")
		return
	}
	log := newLogger(o)
	for _, n := range o.notices {
		log.Warn(n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("merlin stopped", "error", err)
		os.Exit(1)
	}
}

func newLogger(o *options) *slog.Logger {
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	if o.logFormat == "json" {
		handler = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	}
	return slog.New(handler)
}

// cleanups is what run has opened, closed in reverse order on return.
type cleanups []func()

func (c *cleanups) push(f func()) { *c = append(*c, f) }

func (c *cleanups) run() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
}

// run starts every part — listeners first, so a port in use is an
// immediate exit with the reason rather than a half-started node — and
// serves until ctx ends or a part fails. The dataplane stays as it is.
func run(ctx context.Context, o *options, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var cl cleanups
	defer cl.run()
	lis, healthLis, err := listen(o, &cl)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, o, log, &cl, cancel)
	if err != nil {
		return err
	}
	srv, err := newAPI(o, st, lis, log)
	if err != nil {
		return err
	}
	group, gctx := errgroup.WithContext(ctx)
	var runner *node.Runner
	var traffic *node.Traffic
	if o.reconcile {
		if runner, traffic, err = startNode(gctx, o, st, srv.api, srv.reg, log, group, &cl); err != nil {
			srv.grpc.Stop()
			return err
		}
		advertise := o.advertise
		if advertise == "" {
			advertise = lis.Addr().String()
		}
		group.Go(func() error { node.PublishStatus(gctx, st, runner, advertise, log); return nil })
	}
	group.Go(func() error { srv.prober.Run(gctx); return nil })
	group.Go(func() error { checkVIPIndex(gctx, st, log); return nil })
	group.Go(func() error { return srv.api.RunDrainFinisher(gctx, 2*time.Second) })
	group.Go(func() error { return serveAPI(srv.grpc, srv.capped) })
	var hs *http.Server
	if healthLis != nil {
		hs = &http.Server{Handler: healthMux(srv.prober, runner, node.MetricsHandler(srv.reg, metricsWriters(runner, traffic)...), o.pprof), ReadHeaderTimeout: 5 * time.Second}
		group.Go(func() error { return serveHealth(hs, healthLis) })
	}
	if nerr := sdnotify.Notify("READY=1", "STATUS=serving the API on "+lis.Addr().String()+nodeState(o)); nerr != nil {
		log.Warn("telling systemd merlin is ready", "error", nerr)
	}
	<-gctx.Done() // a signal, or a part that failed
	shutdown(log, cancel, srv, hs)
	return group.Wait()
}

// listen opens the API's and the health port's listeners.
func listen(o *options, cl *cleanups) (net.Listener, net.Listener, error) {
	lis, err := net.Listen("tcp", net.JoinHostPort(o.apiAddress, strconv.Itoa(o.port)))
	if err != nil {
		return nil, nil, fmt.Errorf("API listen: %w", err)
	}
	cl.push(func() { lis.Close() })
	if o.healthPort == 0 {
		return lis, nil, nil
	}
	healthLis, err := net.Listen("tcp", net.JoinHostPort(o.healthAddress, strconv.Itoa(o.healthPort)))
	if err != nil {
		return nil, nil, fmt.Errorf("health listen (-health-port %d): %w", o.healthPort, err)
	}
	cl.push(func() { healthLis.Close() })
	return lis, healthLis, nil
}

func serveAPI(g *grpc.Server, lis net.Listener) error {
	if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("API: %w", err)
	}
	return nil
}

func serveHealth(hs *http.Server, lis net.Listener) error {
	if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("health: %w", err)
	}
	return nil
}

// shutdown stops the watcher, node and status publisher (the kernel table
// stays as it is), then the API (gracefully, for at most 5 s) and the
// health port.
func shutdown(log *slog.Logger, cancel context.CancelFunc, srv *apiParts, hs *http.Server) {
	cancel()
	log.Info("stopping")
	_ = sdnotify.Notify("STOPPING=1")
	srv.api.StopHealth()
	stopped := make(chan struct{})
	go func() { srv.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.grpc.Stop()
	}
	if hs != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = hs.Shutdown(sctx)
		scancel()
	}
}

// nodeState completes the status line merlin gives systemd.
func nodeState(o *options) string {
	if o.reconcile {
		return ", reconciling IPVS as node " + o.node
	}
	return ", not reconciling (-reconcile=false)"
}

// ignoreCanceled: a part that ended because merlin is stopping did not fail.
func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// metricsWriters are the node's families written outside the registry (none
// without a node).
func metricsWriters(runner *node.Runner, traffic *node.Traffic) []node.MetricsWriter {
	var out []node.MetricsWriter
	if runner != nil {
		out = append(out, runner)
	}
	if traffic != nil {
		out = append(out, traffic)
	}
	return out
}

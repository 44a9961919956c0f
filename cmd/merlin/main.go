// Command merlin is the merlin node daemon: it serves the Merlin gRPC API
// on top of the desired state in etcd — an external cluster given with
// -store-endpoints, or an etcd embedded in its data directory. Serving the
// API needs no privileges; programming IPVS (with later issues) needs root
// or CAP_NET_ADMIN.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/merlin-ipvs/merlin/control"
	"github.com/merlin-ipvs/merlin/control/etcdembed"
	"github.com/merlin-ipvs/merlin/internal/tlsconfig"
)

type options struct {
	debug          bool
	apiAddress     string
	port           int
	healthPort     int
	storeEndpoints string
	storePrefix    string
	storeTLSCA     string
	storeTLSCert   string
	storeTLSKey    string
	dataDir        string
	etcdClientURL  string
	etcdPeerURL    string
	tlsCert        string
	tlsKey         string
	tlsClientCA    string
	maxMessage     int
	maxStreams     uint
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("merlin", flag.ContinueOnError)
	fs.BoolVar(&o.debug, "debug", false, "debug logs")
	fs.StringVar(&o.apiAddress, "api-address", "", "address the gRPC API listens on (default 127.0.0.1 without TLS, all addresses with TLS)")
	fs.IntVar(&o.port, "port", 4282, "gRPC API port")
	fs.IntVar(&o.healthPort, "health-port", 4283, "port of /healthz, /readyz and /debug/pprof (0: off)")
	fs.StringVar(&o.storeEndpoints, "store-endpoints", "", "comma-separated etcd endpoints; empty runs an embedded single-node etcd in -data-dir")
	fs.StringVar(&o.storePrefix, "store-prefix", "/merlin", "etcd key prefix of the desired state")
	fs.StringVar(&o.storeTLSCA, "store-tls-ca", "", "CA certificate (PEM) of the etcd servers")
	fs.StringVar(&o.storeTLSCert, "store-tls-cert", "", "client certificate (PEM) for etcd")
	fs.StringVar(&o.storeTLSKey, "store-tls-key", "", "client key (PEM) for etcd")
	fs.StringVar(&o.dataDir, "data-dir", "/var/lib/merlin", "merlin's data directory (the embedded etcd lives in DATA-DIR/etcd)")
	fs.StringVar(&o.etcdClientURL, "embedded-etcd-client-url", "http://127.0.0.1:2379", "client URL of the embedded etcd")
	fs.StringVar(&o.etcdPeerURL, "embedded-etcd-peer-url", "http://127.0.0.1:2380", "peer URL of the embedded etcd")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "server certificate (PEM) for the gRPC API; enables TLS")
	fs.StringVar(&o.tlsKey, "tls-key", "", "server key (PEM) for the gRPC API")
	fs.StringVar(&o.tlsClientCA, "tls-client-ca", "", "CA (PEM) that client certificates must chain to; enables mutual TLS")
	fs.IntVar(&o.maxMessage, "max-message-bytes", 16<<20, "largest gRPC message accepted or sent")
	fs.UintVar(&o.maxStreams, "max-concurrent-streams", 256, "concurrent gRPC streams per client connection")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if o.tlsClientCA != "" && o.tlsCert == "" {
		return nil, errors.New("-tls-client-ca needs -tls-cert and -tls-key")
	}
	if o.port <= 0 || o.port > 65535 {
		return nil, fmt.Errorf("-port %d: want 1 to 65535", o.port)
	}
	if o.apiAddress == "" && o.tlsCert == "" {
		o.apiAddress = "127.0.0.1"
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "merlin:", err)
		os.Exit(2)
	}
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("merlin stopped", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	endpoints := splitList(o.storeEndpoints)
	if len(endpoints) == 0 {
		if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		e, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: o.dataDir, ClientURL: o.etcdClientURL, PeerURL: o.etcdPeerURL})
		if err != nil {
			return err
		}
		defer e.Close()
		log.Info("embedded etcd started", "client_url", e.ClientURL, "dir", o.dataDir+"/etcd")
		endpoints = []string{e.ClientURL}
		go func() {
			select {
			case err := <-e.Err():
				log.Error("embedded etcd failed", "error", err)
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	etcdCfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second}
	if o.storeTLSCA != "" || o.storeTLSCert != "" {
		tc, err := tlsconfig.Client(o.storeTLSCA, o.storeTLSCert, o.storeTLSKey, "")
		if err != nil {
			return fmt.Errorf("store TLS: %w", err)
		}
		etcdCfg.TLS = tc
	}
	kv, err := clientv3.New(etcdCfg)
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	defer kv.Close()
	store := control.NewStore(kv, o.storePrefix)

	grpcOpts := control.GRPCOptions{MaxMessageBytes: o.maxMessage, MaxConcurrentStreams: uint32(o.maxStreams)}
	if o.tlsCert != "" {
		tc, err := tlsconfig.Server(o.tlsCert, o.tlsKey, o.tlsClientCA)
		if err != nil {
			return fmt.Errorf("API TLS: %w", err)
		}
		grpcOpts.TLS = tc
	}
	g := control.NewGRPCServer(ctx, control.NewServer(store, log), grpcOpts)
	apiAddr := net.JoinHostPort(o.apiAddress, strconv.Itoa(o.port))
	lis, err := net.Listen("tcp", apiAddr)
	if err != nil {
		return fmt.Errorf("API listen: %w", err)
	}
	log.Info("API listening", "address", lis.Addr().String(), "tls", grpcOpts.TLS != nil, "mutual_tls", o.tlsClientCA != "", "store", strings.Join(endpoints, ","), "prefix", o.storePrefix)

	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() {
		if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("API: %w", err)
		}
	})
	var hs *http.Server
	if o.healthPort != 0 {
		hs = &http.Server{Addr: net.JoinHostPort(o.apiAddress, strconv.Itoa(o.healthPort)), Handler: healthMux(store), ReadHeaderTimeout: 5 * time.Second}
		hl, err := net.Listen("tcp", hs.Addr)
		if err != nil {
			g.Stop()
			wg.Wait()
			return fmt.Errorf("health listen: %w", err)
		}
		wg.Go(func() {
			if err := hs.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("health: %w", err)
			}
		})
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	log.Info("stopping")
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		g.Stop()
	}
	if hs != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = hs.Shutdown(sctx)
		scancel()
	}
	wg.Wait()
	return err
}

func healthMux(store *control.Store) *http.ServeMux {
	mux := http.NewServeMux()
	alive := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	ready := func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if _, err := store.Client().Get(clientv3.WithRequireLeader(ctx), store.Prefix()+"/health", clientv3.WithCountOnly()); err != nil {
			http.Error(w, "etcd: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}
	mux.HandleFunc("/healthz", alive)
	mux.HandleFunc("/alive", alive) // the original Merlin's names
	mux.HandleFunc("/readyz", ready)
	mux.HandleFunc("/health", ready)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

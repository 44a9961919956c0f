// Command merlin is the merlin node daemon: it serves the Merlin gRPC API
// on top of the desired state in etcd — an external cluster given with
// -store-endpoints, or an etcd embedded in its data directory — and makes
// this node's kernel IPVS table match that state. Reconciling IPVS needs
// CAP_NET_ADMIN and a kernel with ip_vs; -reconcile=false serves only the API.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"sigs.k8s.io/yaml"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/control/api"
	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/netif"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/health/execprobe"
	"github.com/merlin-ipvs/merlin/health/grpcprobe"
	"github.com/merlin-ipvs/merlin/internal/connlimit"
	"github.com/merlin-ipvs/merlin/internal/etcdembed"
	"github.com/merlin-ipvs/merlin/internal/etcdlog"
	"github.com/merlin-ipvs/merlin/internal/sdnotify"
	"github.com/merlin-ipvs/merlin/internal/tlsconfig"
	"github.com/merlin-ipvs/merlin/internal/version"
)

type options struct {
	debug              bool
	version            bool
	logFormat          string
	storeBackend       string
	apiAddress         string
	port               int
	healthPort         int
	healthAddress      string
	pprof              bool
	insecureAPI        bool
	storeEndpoints     string
	storePrefix        string
	storeTLSCA         string
	storeTLSCert       string
	storeTLSKey        string
	dataDir            string
	etcdClientURL      string
	etcdPeerURL        string
	tlsCert            string
	tlsKey             string
	tlsClientCA        string
	apiReaders         string
	apiWriters         string
	maxMessage         int
	maxStreams         uint
	maxConns           int
	storeQuota         int64
	idleTimeout        time.Duration
	configFile         string
	node               string
	reconcile          bool
	resync             time.Duration
	adopt              string
	guardFraction      float64
	guardMin           int
	vipInterface       string
	sysctls            bool
	advertise          string
	bgpFile            bgpFile // the file's bgp section, then the -bgp-* flags
	bgp                *bgp.Config
	counterFlags       counterFlags
	metricsReadTimeout time.Duration
	execDir            string
	execUser           string
	maxChecks          int
	counters           *xdpstats.Config // nil: no eBPF counters
	warnings           []string         // weakening settings, for node status
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("merlin", flag.ContinueOnError)
	fs.BoolVar(&o.debug, "debug", false, "debug logs")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.StringVar(&o.storeBackend, "store-backend", "etcd3", "the store: etcd3 (the only one; accepted for the original Merlin's command lines)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text (logfmt) or json; etcd's own logs follow it")
	fs.StringVar(&o.apiAddress, "api-address", "", "address the gRPC API listens on (default 127.0.0.1; all addresses with mutual TLS)")
	fs.BoolVar(&o.insecureAPI, "insecure-api", false, "allow the API on a non-loopback address without client certificates (anyone who reaches it can change the load balancer)")
	fs.IntVar(&o.port, "port", 4282, "gRPC API port")
	fs.IntVar(&o.healthPort, "health-port", 4283, "port of /metrics, /healthz and /readyz (0: off)")
	fs.StringVar(&o.healthAddress, "health-address", "127.0.0.1", "address of the health and metrics port (unauthenticated: keep it on loopback or a management network)")
	fs.BoolVar(&o.pprof, "pprof", false, "serve /debug/pprof on the health port")
	fs.StringVar(&o.storeEndpoints, "store-endpoints", "", "comma-separated etcd endpoints; empty runs an embedded single-node etcd in -data-dir")
	fs.StringVar(&o.storePrefix, "store-prefix", "/merlin", "etcd key prefix of the desired state")
	fs.Int64Var(&o.storeQuota, "store-quota-bytes", store.DefaultStoreQuota, "etcd's backend quota (the embedded etcd runs with it; for an external etcd, give its --quota-backend-bytes): past 90% of it the API accepts only deletes")
	fs.StringVar(&o.storeTLSCA, "store-tls-ca", "", "CA certificate (PEM) of the etcd servers")
	fs.StringVar(&o.storeTLSCert, "store-tls-cert", "", "client certificate (PEM) for etcd")
	fs.StringVar(&o.storeTLSKey, "store-tls-key", "", "client key (PEM) for etcd")
	fs.StringVar(&o.dataDir, "data-dir", "/var/lib/merlin", "merlin's data directory (the embedded etcd lives in DATA-DIR/etcd)")
	fs.StringVar(&o.etcdClientURL, "embedded-etcd-client-url", "http://127.0.0.1:2379", "client URL of the embedded etcd")
	fs.StringVar(&o.etcdPeerURL, "embedded-etcd-peer-url", "http://127.0.0.1:2380", "peer URL of the embedded etcd")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "server certificate (PEM) for the gRPC API; enables TLS")
	fs.StringVar(&o.tlsKey, "tls-key", "", "server key (PEM) for the gRPC API")
	fs.StringVar(&o.tlsClientCA, "tls-client-ca", "", "CA (PEM) that client certificates must chain to; enables mutual TLS")
	fs.StringVar(&o.apiReaders, "api-readers", "", "comma-separated client identities (certificate CN or SAN; * any) that may List, GetService, Watch, Status and Stats; with -api-writers set, everyone else is refused")
	fs.StringVar(&o.apiWriters, "api-writers", "", "comma-separated client identities that may also change the desired state; empty with -api-readers empty: every client the TLS CA admits")
	fs.IntVar(&o.maxMessage, "max-message-bytes", 16<<20, "largest gRPC message accepted or sent")
	fs.UintVar(&o.maxStreams, "max-concurrent-streams", 256, "concurrent gRPC streams per client connection")
	fs.IntVar(&o.maxConns, "max-connections", 1024, "concurrent API client connections; more are closed at once and counted (merlin_api_connections_refused_total)")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 5*time.Minute, "close an API connection without streams after this long")
	fs.StringVar(&o.configFile, "config", "", "YAML file of flag settings (keys are flag names); flags on the command line win")
	host, _ := os.Hostname()
	fs.StringVar(&o.node, "node", host, "this node's name in node status")
	fs.BoolVar(&o.reconcile, "reconcile", true, "make this node's IPVS table match the desired state")
	fs.DurationVar(&o.resync, "reconcile-sync-period", 30*time.Second, "how often to read the whole kernel table and repair changes made behind merlin's back")
	fs.StringVar(&o.adopt, "adopt", "", "comma-separated prefixes: existing kernel services with a desired VIP inside them are taken over")
	fs.Float64Var(&o.guardFraction, "deletion-guard-fraction", 0.5, "hold back a desired state deleting more than this share of the owned services at once (negative: off)")
	fs.IntVar(&o.guardMin, "deletion-guard-min", 3, "... and at least this many")
	fs.StringVar(&o.vipInterface, "vip-interface", "", "put the VIPs on this dummy interface (created if missing); empty: leave addresses alone")
	fs.BoolVar(&o.sysctls, "director-sysctls", false, "set the sysctls an IPVS director needs (vs/conntrack, expire_nodest_conn, expire_quiescent_template, ip_forward)")
	fs.StringVar(&o.advertise, "advertise-address", "", "address:port other nodes' clients reach this node's API at (node status); default the listen address")
	fs.StringVar(&o.execDir, "health-exec-dir", "", "run exec health checks: only programs in this directory (root's, like its programs), no shell; empty: exec checks are not run on this node (their servers are down with the reason)")
	fs.StringVar(&o.execUser, "health-exec-user", "nobody", "the unprivileged user exec health checks run as")
	fs.IntVar(&o.maxChecks, "health-max-checks", 16384, "most distinct health checks this node runs; the others are not run (their servers stay down with the reason)")
	o.counterFlags.register(fs)
	fs.DurationVar(&o.metricsReadTimeout, "metrics-read-timeout", node.DefaultScrapeTimeout, "bound on one scrape's read of the kernel's IPVS counters (a read cut short exports what it got and merlin_ipvs_stats_up 0)")
	var bf bgpFile
	var peers peerFlags
	fs.Func("bgp-local-as", "BGP: this node's AS number (BGP is off without it; peers and the rest go in the config file's bgp section)", func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		bf.LocalAS = uint32(n)
		return err
	})
	fs.StringVar(&bf.RouterID, "bgp-router-id", "", "BGP: router ID (an IPv4 address of this node)")
	fs.IntVar(&bf.ListenPort, "bgp-listen-port", 0, "BGP: port to accept sessions on (0: dial out only; passive peers need it)")
	fs.StringVar(&bf.NextHopIPv6, "bgp-next-hop-ipv6", "", "BGP: next hop of IPv6 VIPs announced over IPv4 sessions")
	fs.Var(&peers, "bgp-peer", "BGP peer, repeatable: address=IP,as=N[,port=,local_address=,password_file=,hold_time=,keepalive_time=,connect_retry=,multihop_ttl=,passive,graceful_restart=,families=ipv4-unicast+ipv6-unicast,max_prefixes=]")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.configFile != "" {
		if err := applyConfigFile(fs, o.configFile, &o.bgpFile); err != nil {
			return nil, err
		}
	}
	mergeBGPFlags(fs, &o.bgpFile, bf, peers)
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if o.tlsClientCA != "" && o.tlsCert == "" {
		return nil, errors.New("-tls-client-ca needs -tls-cert and -tls-key")
	}
	switch o.storeBackend {
	case "etcd3":
	case "etcd2", "etcd":
		return nil, fmt.Errorf("-store-backend %s: merlin stores its state in etcd's v3 API only; migrate the keys with `etcdctl migrate` (etcd 3.4) and start with -store-backend etcd3 (or leave it out)", o.storeBackend)
	default:
		return nil, fmt.Errorf("-store-backend %q: want etcd3", o.storeBackend)
	}
	if err := checkStoreFlags(o); err != nil {
		return nil, err
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return nil, fmt.Errorf("-log-format %q: want text or json", o.logFormat)
	}
	if o.port <= 0 || o.port > 65535 {
		return nil, fmt.Errorf("-port %d: want 1 to 65535", o.port)
	}
	if o.healthPort < 0 || o.healthPort > 65535 {
		return nil, fmt.Errorf("-health-port %d: want 0 (off) or 1 to 65535", o.healthPort)
	}
	if o.apiAddress == "" {
		o.apiAddress = "127.0.0.1"
		if o.tlsClientCA != "" {
			o.apiAddress = "" // every address: clients must show certificates
		}
	}
	if (o.apiReaders != "" || o.apiWriters != "") && o.tlsClientCA == "" {
		return nil, errors.New("-api-readers and -api-writers name client certificates: they need -tls-client-ca")
	}
	if !loopback(o.apiAddress) && o.tlsClientCA == "" && !o.insecureAPI {
		return nil, fmt.Errorf("-api-address %q: a non-loopback API needs client certificates (-tls-cert, -tls-key, -tls-client-ca); -insecure-api allows it without", shorten(o.apiAddress))
	}
	var err error
	if o.bgp, err = bgpConfig(o.bgpFile); err != nil {
		return nil, err
	}
	if o.counters, err = o.counterFlags.config(); err != nil {
		return nil, err
	}
	if o.counters != nil && !o.reconcile {
		return nil, errors.New("-counters-* with -reconcile=false: the counters count the services this node reconciles")
	}
	if o.bgp != nil && !o.reconcile {
		return nil, errors.New("bgp with -reconcile=false: BGP announces the VIPs this node reconciles; configure one or the other")
	}
	return o, nil
}

// checkStoreFlags refuses limits and store settings that cannot work,
// before anything starts (each used to be taken silently).
func checkStoreFlags(o *options) error {
	switch {
	case o.maxMessage < 1024 || o.maxMessage > 1<<30:
		return fmt.Errorf("-max-message-bytes %d: want 1024 to %d", o.maxMessage, 1<<30)
	case o.maxStreams == 0 || o.maxStreams > 1<<16:
		return fmt.Errorf("-max-concurrent-streams %d: want 1 to %d", o.maxStreams, 1<<16)
	case o.storeQuota < 1<<20 || o.storeQuota > 8<<30:
		return fmt.Errorf("-store-quota-bytes %d: want 1 MiB to 8 GiB (etcd's largest)", o.storeQuota)
	case o.maxConns < 1 || o.maxConns > 1<<20:
		return fmt.Errorf("-max-connections %d: want 1 to %d", o.maxConns, 1<<20)
	case o.metricsReadTimeout < 100*time.Millisecond || o.metricsReadTimeout > 10*time.Minute:
		return fmt.Errorf("-metrics-read-timeout %s: want 100ms to 10m", o.metricsReadTimeout)
	case o.maxChecks < 1 || o.maxChecks > 1<<20:
		return fmt.Errorf("-health-max-checks %d: want 1 to %d", o.maxChecks, 1<<20)
	case o.idleTimeout < time.Second:
		return fmt.Errorf("-idle-timeout %s: want at least 1s", o.idleTimeout)
	case (o.storeTLSCert == "") != (o.storeTLSKey == ""):
		return errors.New("-store-tls-cert and -store-tls-key go together (without them etcd would be reached without a client certificate)")
	}
	for _, e := range splitList(o.storeEndpoints) {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("-store-endpoints %q: want http(s)://HOST:PORT", shorten(e))
		}
	}
	for name, v := range map[string]string{"-embedded-etcd-client-url": o.etcdClientURL, "-embedded-etcd-peer-url": o.etcdPeerURL} {
		if u, err := url.Parse(v); err != nil || u.Scheme != "http" || u.Port() == "" {
			return fmt.Errorf("%s %q: want http://IP:PORT", name, shorten(v))
		}
	}
	return nil
}

// loopback: the address only this machine reaches.
func loopback(addr string) bool {
	if addr == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(addr)
	return err == nil && a.IsLoopback()
}

func shorten(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func main() {
	bgp.RunChildIfAsked() // this process may be merlin's BGP speaker
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "merlin:", err)
		os.Exit(2)
	}
	if o.version {
		fmt.Println("merlin", version.Read())
		return
	}
	if o.counterFlags.remove {
		if err := xdpstats.Remove(o.counterFlags.pinDir); err != nil {
			fmt.Fprintln(os.Stderr, "merlin: remove counters:", err)
			os.Exit(1)
		}
		fmt.Println("merlin: eBPF counters detached, pins under", o.counterFlags.pinDir, "removed")
		return
	}
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	if o.logFormat == "json" {
		handler = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	}
	log := slog.New(handler)
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
	// Listen before anything starts, so that a port in use is an
	// immediate exit with the reason rather than a half-started node.
	apiAddr := net.JoinHostPort(o.apiAddress, strconv.Itoa(o.port))
	lis, err := net.Listen("tcp", apiAddr)
	if err != nil {
		return fmt.Errorf("API listen: %w", err)
	}
	defer lis.Close()
	var healthLis net.Listener
	if o.healthPort != 0 {
		healthLis, err = net.Listen("tcp", net.JoinHostPort(o.healthAddress, strconv.Itoa(o.healthPort)))
		if err != nil {
			return fmt.Errorf("health listen (-health-port %d): %w", o.healthPort, err)
		}
		defer healthLis.Close()
	}
	endpoints := splitList(o.storeEndpoints)
	if len(endpoints) == 0 {
		if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		e, err := etcdembed.Start(ctx, etcdembed.Config{DataDir: o.dataDir, ClientURL: o.etcdClientURL, PeerURL: o.etcdPeerURL, QuotaBytes: o.storeQuota, Log: log})
		if err != nil {
			return err
		}
		var watch sync.WaitGroup
		defer watch.Wait() // after Close, which ends it
		defer e.Close()
		log.Info("embedded etcd started", "client_url", e.ClientURL, "dir", o.dataDir+"/etcd")
		endpoints = []string{e.ClientURL}
		watch.Go(func() {
			// The channel closes when the server stops: on a clean stop
			// that is no failure.
			if err, ok := <-e.Err(); ok && err != nil {
				log.Error("embedded etcd failed", "error", err)
				cancel()
			}
		})
	}
	etcdCfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second,
		Logger: etcdlog.Client(log.With("component", "etcd-client"))}
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
	st := store.NewStore(kv, o.storePrefix)
	st.SetQuota(o.storeQuota)

	grpcOpts := api.GRPCOptions{MaxMessageBytes: o.maxMessage, MaxConcurrentStreams: uint32(o.maxStreams), IdleTimeout: o.idleTimeout}
	if o.tlsCert != "" {
		tc, err := tlsconfig.Server(o.tlsCert, o.tlsKey, o.tlsClientCA)
		if err != nil {
			return fmt.Errorf("API TLS: %w", err)
		}
		grpcOpts.TLS = tc
	}
	apiSrv := api.NewServer(st, log)
	roles := api.Roles{Readers: splitList(o.apiReaders), Writers: splitList(o.apiWriters)}
	apiSrv.SetRoles(roles)
	g := api.NewGRPCServer(apiSrv, grpcOpts)
	if !loopback(o.apiAddress) && o.tlsClientCA == "" {
		w := fmt.Sprintf("the API accepts clients without certificates on %s (-insecure-api): anyone who reaches it can change this load balancer", lis.Addr())
		log.Warn(w)
		o.warnings = append(o.warnings, w)
	}
	log.Info("API listening", "address", lis.Addr().String(), "tls", grpcOpts.TLS != nil, "mutual_tls", o.tlsClientCA != "", "roles", roles.Enforced(), "store", strings.Join(endpoints, ","), "prefix", o.storePrefix)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	etcdUp := prometheus.NewGauge(prometheus.GaugeOpts{Name: "merlin_etcd_connected", Help: "1 while etcd answers (with a leader)."})
	reg.MustRegister(etcdUp,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "merlin_etcd_db_bytes", Help: "Size of etcd's database (largest member), as last looked at."},
			func() float64 { n, _ := st.Usage(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "merlin_etcd_alarm", Help: "1 while etcd has an alarm raised (NOSPACE, CORRUPT): it refuses writes."},
			func() float64 {
				if _, a := st.Usage(); a != "" {
					return 1
				}
				return 0
			}))
	build := version.Read()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "merlin_build_info", Help: "1, labelled with the running binary's version, commit and Go version."}, []string{"version", "commit", "goversion"})
	buildInfo.WithLabelValues(build.Version, build.Commit, build.GoVersion).Set(1)
	reg.MustRegister(buildInfo)
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "merlin_api_connections_refused_total", Help: "API client connections closed at once for being beyond -max-connections."})
	capped := connlimit.New(lis, fitConnections(o.maxConns, log), refused.Inc)
	reg.MustRegister(refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "merlin_api_connections", Help: "Open API client connections."},
		func() float64 { return float64(capped.Open()) }))
	var runner *node.Runner
	var traffic *node.Traffic
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	if o.reconcile {
		a, tr, stop, err := startNode(ctx, o, st, apiSrv, reg, log, errc)
		if err != nil {
			g.Stop()
			return err
		}
		defer stop()
		runner, traffic = a, tr
		advertise := o.advertise
		if advertise == "" {
			advertise = lis.Addr().String()
		}
		wg.Go(func() { node.PublishStatus(ctx, st, runner, advertise, log) })
	}
	wg.Go(func() { probeEtcd(ctx, st, etcdUp, log) })
	wg.Go(func() { apiSrv.RunHealth(ctx) })
	wg.Go(func() {
		if err := g.Serve(capped); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("API: %w", err)
		}
	})
	var hs *http.Server
	if healthLis != nil {
		hs = &http.Server{Handler: healthMux(st, runner, node.MetricsHandler(reg, traffic), o.pprof), ReadHeaderTimeout: 5 * time.Second}
		wg.Go(func() {
			if err := hs.Serve(healthLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("health: %w", err)
			}
		})
	}
	if nerr := sdnotify.Notify("READY=1", "STATUS=serving the API on "+lis.Addr().String()+nodeState(o)); nerr != nil {
		log.Warn("telling systemd merlin is ready", "error", nerr)
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel() // stops the watcher, node and status publisher; the kernel table stays as it is
	log.Info("stopping")
	_ = sdnotify.Notify("STOPPING=1")
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

// fitConnections keeps the API's clients from taking the descriptors
// merlin and its embedded etcd need (Go has raised the soft limit to the
// hard one already).
func fitConnections(max int, log *slog.Logger) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return max
	}
	fitted, lowered := connlimit.Fit(max, lim.Cur)
	if lowered {
		log.Warn("-max-connections lowered to keep descriptors for merlin and etcd (raise LimitNOFILE)", "max_connections", max, "lowered_to", fitted, "open_files_limit", lim.Cur)
	}
	return fitted
}

// nodeState completes the status line merlin gives systemd.
func nodeState(o *options) string {
	if o.reconcile {
		return ", reconciling IPVS as node " + o.node
	}
	return ", not reconciling (-reconcile=false)"
}

func healthMux(st *store.Store, runner *node.Runner, metrics http.Handler, withPprof bool) *http.ServeMux {
	mux := http.NewServeMux()
	alive := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	ready := func(w http.ResponseWriter, r *http.Request) {
		if err := st.Ping(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if _, alarms := st.Usage(); alarms != "" {
			http.Error(w, "etcd alarm "+alarms+": writes are refused", http.StatusServiceUnavailable)
			return
		}
		if runner != nil {
			if status, _ := runner.Status(); status.LastResult != "ok" {
				http.Error(w, "reconcile: "+status.LastResult, http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	}
	mux.Handle("/metrics", metrics)
	mux.HandleFunc("/healthz", alive)
	mux.HandleFunc("/alive", alive) // the original Merlin's names
	mux.HandleFunc("/readyz", ready)
	mux.HandleFunc("/health", ready)
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
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

// startNode opens this namespace's IPVS table and runs the watcher and
// the node runner; stop waits for them after ctx ends.
func startNode(ctx context.Context, o *options, st *store.Store, apiSrv *api.Server, reg *prometheus.Registry, log *slog.Logger, errc chan<- error) (*node.Runner, *node.Traffic, func(), error) {
	var execProber *execprobe.Prober
	if o.execDir != "" {
		var err error
		if execProber, err = execprobe.New(execprobe.Config{Dir: o.execDir, User: o.execUser}); err != nil {
			return nil, nil, nil, fmt.Errorf("-health-exec-dir, -health-exec-user: %w", err)
		}
		w := fmt.Sprintf("exec health checks run programs from %s as %s", o.execDir, o.execUser)
		log.Warn(w)
		o.warnings = append(o.warnings, w)
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return nil, nil, nil, fmt.Errorf("data dir: %w", err)
	}
	table, err := ipvs.Open(ipvs.Options{})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open IPVS (run with -reconcile=false to serve only the API): %w", err)
	}
	var sinks []node.Sink
	if o.vipInterface != "" {
		v, err := netif.NewVIPs(o.vipInterface, filepath.Join(o.dataDir, "vips.json"))
		if err != nil {
			table.Close()
			return nil, nil, nil, err
		}
		sinks = append(sinks, node.NewVIPSink(v))
	}
	var speaker *bgp.Supervised
	if o.bgp != nil {
		var err error
		if speaker, err = bgp.NewSupervised(*o.bgp, log.With("component", "bgp"), ""); err != nil {
			table.Close()
			return nil, nil, nil, err
		}
		sinks = append(sinks, node.NewBGPSink(speaker))
		reg.MustRegister(node.NewBGPCollector(speaker))
	}
	var adopt []netip.Prefix
	for _, p := range splitList(o.adopt) {
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			table.Close()
			return nil, nil, nil, fmt.Errorf("-adopt %q: %w", p, err)
		}
		adopt = append(adopt, pfx)
	}
	reader, err := ipvs.Open(ipvs.Options{})
	if err != nil {
		table.Close()
		return nil, nil, nil, fmt.Errorf("open IPVS for resyncs: %w", err)
	}
	statsReader, err := ipvs.Open(ipvs.Options{})
	if err != nil {
		reader.Close()
		table.Close()
		return nil, nil, nil, fmt.Errorf("open IPVS for metrics: %w", err)
	}
	var counter *xdpstats.Counter
	var counters node.Counters // stays a nil interface without counters
	if o.counters != nil {
		counter = openCounters(ctx, o.counters, log.With("component", "counters"))
		counters = counter
	}
	traffic := node.NewTraffic(statsReader, counters, o.metricsReadTimeout)
	sinks = append(sinks, traffic.Sink())
	closeTraffic := func() {
		if counter != nil {
			_ = counter.Close()
		}
		statsReader.Close()
	}
	checks := health.NewMonitor(log.With("component", "health"), node.NewHealthMetrics(reg))
	checks.Handle(health.GRPC, grpcprobe.Prober{})
	checks.SetMaxChecks(o.maxChecks)
	if execProber != nil {
		checks.Handle(health.Exec, execProber)
	} else {
		checks.Disable(health.Exec, "not run: exec health checks are off on this node (merlin -health-exec-dir)")
	}
	runner, err := node.NewRunner(node.RunnerConfig{
		Node: o.node, Version: version.Read().String(), Warnings: o.warnings, ResyncPeriod: o.resync, OwnershipFile: filepath.Join(o.dataDir, "owned-services.json"), Adopt: adopt,
		DeletionGuardFraction: o.guardFraction, DeletionGuardMin: o.guardMin,
	}, node.RunnerDeps{IPVS: table, Reader: reader, Health: checks, Sinks: sinks, Metrics: node.NewNodeMetrics(reg), Log: log.With("component", "node")})
	if err != nil {
		checks.Close()
		closeTraffic()
		reader.Close()
		table.Close()
		return nil, nil, nil, err
	}
	apiSrv.SetStats(&node.KernelStats{Node: o.node, Client: reader, Runner: runner})
	// Every start-up check has passed: only now change the node.
	if o.sysctls {
		if err := netif.SetSysctls(netif.DirectorSysctls); err != nil {
			log.Warn("director sysctls", "error", err)
		}
	}
	watcher := store.NewWatcher(st, log.With("component", "watcher"), store.WatcherConfig{})
	reg.MustRegister(node.NewWatcherCollector(watcher))
	var local sync.WaitGroup
	local.Go(func() { _ = watcher.Run(ctx, runner.Offer) })
	local.Go(func() { _ = runner.Run(ctx) })
	if speaker != nil {
		local.Go(func() {
			if err := speaker.Run(ctx); err != nil {
				errc <- fmt.Errorf("bgp: %w", err)
			}
		})
		log.Info("bgp speaker", "local_as", o.bgp.LocalAS, "router_id", o.bgp.RouterID, "peers", len(o.bgp.Peers))
	}
	if counter != nil {
		local.Go(func() { counter.Run(ctx) })
		local.Go(func() { traffic.RunPassive(ctx, checks) })
	}
	log.Info("reconciling IPVS", "node", o.node, "resync", o.resync, "vip_interface", o.vipInterface)
	return runner, traffic, func() { local.Wait(); checks.Close(); closeTraffic(); reader.Close(); table.Close() }, nil
}

// probeEtcd keeps merlin_etcd_connected current, and what the store's
// write guard and /readyz know of etcd's size and alarms.
func probeEtcd(ctx context.Context, st *store.Store, up prometheus.Gauge, log *slog.Logger) {
	alarmed := false
	for {
		if st.Ping(ctx) == nil {
			up.Set(1)
			err := st.Check(ctx)
			if err != nil && !errors.Is(err, store.ErrEtcdAlarm) {
				log.Debug("etcd usage not known", "error", err)
			} else if (err != nil) != alarmed && ctx.Err() == nil {
				alarmed = err != nil
				if alarmed {
					log.Error("etcd refuses writes", "error", err)
				} else {
					log.Info("etcd alarm cleared")
				}
			}
		} else {
			up.Set(0)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// applyConfigFile sets every flag the file names that the command line
// did not, and reads its bgp section.
func applyConfigFile(fs *flag.FlagSet, path string, bf *bgpFile) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var values map[string]any
	if err := yaml.UnmarshalStrict(raw, &values); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if section, ok := values["bgp"]; ok {
		raw, err := json.Marshal(section)
		if err == nil {
			err = yaml.UnmarshalStrict(raw, bf)
		}
		if err != nil {
			return fmt.Errorf("config %s: bgp: %w", path, err)
		}
		delete(values, "bgp")
	}
	for _, k := range slices.Sorted(maps.Keys(values)) {
		f := fs.Lookup(k)
		if f == nil || k == "config" {
			return fmt.Errorf("config %s: unknown setting %q", path, k)
		}
		if set[k] {
			continue
		}
		v := values[k]
		var text string
		switch x := v.(type) {
		case []any:
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			text = strings.Join(parts, ",")
		case float64:
			text = strconv.FormatFloat(x, 'f', -1, 64)
		default:
			text = fmt.Sprint(x)
		}
		if err := f.Value.Set(text); err != nil {
			return fmt.Errorf("config %s: %s: %w", path, k, err)
		}
	}
	return nil
}

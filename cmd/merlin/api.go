package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"

	"github.com/merlin-ipvs/merlin/control/api"
	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/internal/connlimit"
	"github.com/merlin-ipvs/merlin/internal/tlsconfig"
	"github.com/merlin-ipvs/merlin/internal/version"
)

// apiParts are the API and what serves beside it: the metrics registry,
// the capped listener and the one etcd prober (gRPC health, /readyz and
// merlin_etcd_connected all read it).
type apiParts struct {
	api    *api.Server
	grpc   *grpc.Server
	reg    *prometheus.Registry
	capped *connlimit.Listener
	prober *store.Prober
}

// newAPI builds the gRPC server over st, its roles and TLS, and the
// process-wide metrics.
func newAPI(o *options, st *store.Store, lis net.Listener, log *slog.Logger) (*apiParts, error) {
	grpcOpts := api.GRPCOptions{MaxMessageBytes: o.maxMessage, MaxConcurrentStreams: uint32(o.maxStreams), IdleTimeout: o.idleTimeout}
	if o.tlsCert != "" {
		tc, err := tlsconfig.Server(o.tlsCert, o.tlsKey, o.tlsClientCA)
		if err != nil {
			return nil, fmt.Errorf("API TLS: %w", err)
		}
		grpcOpts.TLS = tc
	}
	p := &apiParts{api: api.NewServer(st, log), reg: prometheus.NewRegistry()}
	roles := api.Roles{Readers: splitList(o.apiReaders), Writers: splitList(o.apiWriters)}
	p.api.SetRoles(roles)
	p.api.SetSnapshotStall(o.snapshotStall)
	p.grpc = api.NewGRPCServer(p.api, grpcOpts)
	if !loopback(o.apiAddress) && o.tlsClientCA == "" {
		w := fmt.Sprintf("the API accepts clients without certificates on %s (-insecure-api): anyone who reaches it can change this load balancer", lis.Addr())
		log.Warn(w)
		o.warnings = append(o.warnings, w)
	}
	log.Info("API listening", "address", lis.Addr().String(), "tls", grpcOpts.TLS != nil, "mutual_tls", o.tlsClientCA != "", "roles", roles.Enforced(),
		"store", strings.Join(st.Endpoints(), ","), "prefix", o.storePrefix)
	p.prober = store.NewProber(st, 5*time.Second, log.With("component", "etcd-probe"), p.api.SetServing)
	registerProcessMetrics(p.reg, st, p.prober)
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "merlin_api_connections_refused_total", Help: "API client connections closed at once for being beyond -max-connections or -max-connections-per-source."})
	fitted := fitConnections(o.maxConns, log)
	p.capped = connlimit.New(lis, fitted, o.maxConnsPerSource, refused.Inc) // a per-source cap above the total is the total
	p.reg.MustRegister(refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "merlin_api_connections", Help: "Open API client connections."},
		func() float64 { return float64(p.capped.Open()) }))
	return p, nil
}

// registerProcessMetrics: the Go runtime, the build, and etcd as the
// prober last saw it.
func registerProcessMetrics(reg *prometheus.Registry, st *store.Store, prober *store.Prober) {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "merlin_etcd_connected", Help: "1 while etcd answers (with a leader)."},
			func() float64 { return b2f(prober.Connected()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "merlin_etcd_db_bytes", Help: "Size of etcd's database (largest member), as last looked at."},
			func() float64 { n, _ := st.Usage(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "merlin_etcd_alarm", Help: "1 while etcd has an alarm raised (NOSPACE, CORRUPT): it refuses writes."},
			func() float64 { _, a := st.Usage(); return b2f(a != "") }))
	build := version.Read()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "merlin_build_info", Help: "1, labelled with the running binary's version, commit and Go version."}, []string{"version", "commit", "goversion"})
	buildInfo.WithLabelValues(build.Version, build.Commit, build.GoVersion).Set(1)
	reg.MustRegister(buildInfo)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
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

// healthMux serves /metrics, liveness and readiness (etcd answers without
// an alarm, and the node's last pass went through), and pprof if asked.
func healthMux(prober *store.Prober, runner *node.Runner, metrics http.Handler, withPprof bool) *http.ServeMux {
	mux := http.NewServeMux()
	alive := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	ready := func(w http.ResponseWriter, r *http.Request) {
		if err := prober.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
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

// checkVIPIndex builds the VIP index for services the original Merlin left
// without one (once, retried until etcd answers) and reports VIPs that
// several services share.
func checkVIPIndex(ctx context.Context, st *store.Store, log *slog.Logger) {
	for wait := time.Second; ; wait = min(2*wait, time.Minute) {
		rep, err := st.CheckVIPIndex(ctx)
		if err == nil {
			if rep.Indexed > 0 {
				log.Info("indexed the VIPs of services stored without an index (the original Merlin's state)", "services", rep.Indexed)
			}
			for _, d := range rep.Duplicates {
				log.Warn("services share a VIP (the original Merlin allowed it): new services cannot take it; move or delete all but one (meradm status)",
					"vip", d.VIP, "services", strings.Join(d.Services, ","), "index_names", d.Holder)
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("check the VIP index; retrying", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

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
	"github.com/merlin-ipvs/merlin/internal/version"
)

// nodeParts are what the node runs on, opened in order; what needs
// closing is on the cleanup stack.
type nodeParts struct {
	table, reader, statsReader *ipvs.Client
	sinks                      []node.Sink
	speaker                    *bgp.Supervised
	bgpApplier                 *bgpApplier
	syncSink                   node.SyncSink // nil: connection sync off
	counter                    *xdpstats.Counter
	traffic                    *node.Traffic
	checks                     *health.Monitor
	adopt                      []netip.Prefix
	args                       []string // the command line, re-read on SIGHUP
}

// startNode opens this namespace's IPVS table and the node's sinks, and
// runs the watcher, the runner and the speaker under group. Every start-up
// check comes before the node is changed (sysctls last).
func startNode(ctx context.Context, o *options, st *store.Store, srv *api.Server, reg *prometheus.Registry, log *slog.Logger, group *errgroup.Group, cl *cleanups) (*node.Runner, *node.Traffic, error) {
	execProber, err := newExecProber(o, log)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("data dir: %w", err)
	}
	p := &nodeParts{args: o.args}
	if err := p.openIPVS(cl); err != nil {
		return nil, nil, err
	}
	if err := p.newSinks(o, reg, log); err != nil {
		return nil, nil, err
	}
	p.openTraffic(ctx, o, log, cl)
	p.newChecks(o, reg, execProber, log, cl)
	runner, err := node.NewRunner(node.RunnerConfig{
		Node: o.node, Version: version.Read().String(), Warnings: o.warnings, ResyncPeriod: o.resync, OwnershipFile: filepath.Join(o.dataDir, "owned-services.json"),
		CheckStateFile: filepath.Join(o.dataDir, "check-states.json"), Adopt: p.adopt,
		DeletionGuardFraction: o.guardFraction, DeletionGuardMin: o.guardMin, LinkBandwidthCapacity: o.bandwidthCapacity,
	}, node.RunnerDeps{IPVS: p.table, Reader: p.reader, Health: p.checks, Sinks: p.sinks, WarmUp: p.warmUp(), Metrics: node.NewNodeMetrics(reg), Log: log.With("component", "node")})
	if err != nil {
		return nil, nil, err
	}
	srv.SetStats(&node.KernelStats{Node: o.node, Client: p.reader, Runner: runner})
	if o.sysctls {
		if err := netif.SetSysctls(netif.DirectorSysctls); err != nil {
			log.Warn("director sysctls", "error", err)
		}
	}
	if o.sysctls && o.sync != nil {
		// Before the daemons start: sync_ports cannot change under them.
		if err := netif.SetSysctls(netif.SyncSysctls); err != nil {
			log.Warn("connection sync sysctls (daemons already running keep theirs until restarted)", "error", err)
		}
	}
	p.run(ctx, st, runner, reg, log, group)
	log.Info("reconciling IPVS", "node", o.node, "resync", o.resync, "vip_interface", o.vipInterface)
	return runner, p.traffic, nil
}

// run starts the node's long-lived parts.
func (p *nodeParts) run(ctx context.Context, st *store.Store, runner *node.Runner, reg *prometheus.Registry, log *slog.Logger, group *errgroup.Group) {
	watcher := store.NewWatcher(st, log.With("component", "watcher"), store.WatcherConfig{})
	reg.MustRegister(node.NewWatcherCollector(watcher))
	var warnedEmpty sync.Once
	offer := func(u *store.Update) {
		if u.Full && len(u.Services) == 0 && len(u.Invalid) == 0 {
			warnedEmpty.Do(func() { warnEmptyPrefix(log, st.Prefix()) })
		}
		runner.Offer(u)
		p.bgpApplier.Offer(u.BGP)
	}
	group.Go(func() error { return ignoreCanceled(watcher.Run(ctx, offer)) })
	group.Go(func() error { return ignoreCanceled(runner.Run(ctx)) })
	group.Go(func() error { p.bgpApplier.Run(ctx); return nil })
	group.Go(func() error { p.rereadOnHangup(ctx, log); return nil })
	group.Go(func() error {
		if err := p.speaker.Run(ctx); err != nil {
			return fmt.Errorf("bgp: %w", err)
		}
		return nil
	})
	group.Go(func() error { p.traffic.RunReads(ctx); return nil })
	if p.counter != nil {
		group.Go(func() error { p.counter.Run(ctx); return nil })
		group.Go(func() error { p.traffic.RunPassive(ctx, p.checks); return nil })
	}
}

// newExecProber: exec checks only where the node enables them.
func newExecProber(o *options, log *slog.Logger) (*execprobe.Prober, error) {
	if o.execDir == "" {
		return nil, nil
	}
	pr, err := execprobe.New(execprobe.Config{Dir: o.execDir, User: o.execUser})
	if err != nil {
		return nil, fmt.Errorf("-health-exec-dir, -health-exec-user: %w", err)
	}
	w := fmt.Sprintf("exec health checks run programs from %s as %s", o.execDir, o.execUser)
	log.Warn(w)
	o.warnings = append(o.warnings, w)
	return pr, nil
}

// openIPVS opens three sockets: changes, background resyncs, metrics.
func (p *nodeParts) openIPVS(cl *cleanups) error {
	var err error
	if p.table, err = ipvs.Open(ipvs.Options{}); err != nil {
		return fmt.Errorf("open IPVS (run with -reconcile=false to serve only the API): %w", err)
	}
	cl.push(func() { p.table.Close() })
	if p.reader, err = ipvs.Open(ipvs.Options{}); err != nil {
		return fmt.Errorf("open IPVS for resyncs: %w", err)
	}
	cl.push(func() { p.reader.Close() })
	if p.statsReader, err = ipvs.Open(ipvs.Options{}); err != nil {
		return fmt.Errorf("open IPVS for metrics: %w", err)
	}
	cl.push(func() { p.statsReader.Close() })
	return nil
}

// newSinks: VIP addresses and BGP, where configured; and the prefixes of
// kernel services to adopt.
func (p *nodeParts) newSinks(o *options, reg *prometheus.Registry, log *slog.Logger) error {
	if o.vipInterface != "" {
		v, err := netif.NewVIPs(o.vipInterface, filepath.Join(o.dataDir, "vips.json"))
		if err != nil {
			return err
		}
		p.sinks = append(p.sinks, node.NewVIPSink(v))
	}
	// Always a speaker: the cluster's BGP configuration may turn it on. It
	// runs nothing until a configuration has a local AS.
	s, err := bgp.NewSupervised(bgp.Config{}, log.With("component", "bgp"), "")
	if err != nil {
		return err
	}
	p.speaker = s
	p.bgpApplier = newBGPApplier(s, nodeBGP{file: o.bgpFile, node: o.node, labels: o.labels}, log.With("component", "bgp"))
	p.bgpApplier.poke() // the node's own configuration, before the cluster's is read
	p.sinks = append(p.sinks, node.NewBGPSink(s, o.bandwidthInterval))
	p.sinks = append(p.sinks, node.NewServerDrainSink(p.statsReader), node.NewPathProbeSink(p.table))
	reg.MustRegister(node.NewBGPCollector(s))
	if o.sync != nil {
		p.syncSink = node.NewSyncSink(p.table, node.CountConnections(p.statsReader), o.syncFlags.warmMax,
			newSyncLink(o.syncFlags.iface, o.dataDir), o.sync...)
		p.sinks = append(p.sinks, p.syncSink)
		reg.MustRegister(p.syncSink.(prometheus.Collector))
	}
	for _, s := range splitList(o.adopt) {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("-adopt %q: %w", s, err)
		}
		p.adopt = append(p.adopt, pfx)
	}
	return nil
}

// openTraffic: the eBPF counters (if configured) and the traffic sink and
// collector on the kernel's counters.
func (p *nodeParts) openTraffic(ctx context.Context, o *options, log *slog.Logger, cl *cleanups) {
	var counters node.Counters // stays a nil interface without counters
	if o.counters != nil {
		p.counter = openCounters(ctx, o.counters, log.With("component", "counters"))
		counters = p.counter
		cl.push(func() { _ = p.counter.Close() })
	}
	p.traffic = node.NewTraffic(p.statsReader, counters, node.TrafficOptions{
		ReadInterval: o.metricsInterval, ReadTimeout: o.metricsReadTimeout, BackendFamilies: o.metricsFamilies})
	p.sinks = append(p.sinks, p.traffic.Sink())
}

// newChecks: the health monitor with the probers this node allows.
func (p *nodeParts) newChecks(o *options, reg *prometheus.Registry, execProber *execprobe.Prober, log *slog.Logger, cl *cleanups) {
	p.checks = health.NewMonitor(log.With("component", "health"), node.NewHealthMetrics(reg))
	cl.push(p.checks.Close)
	p.checks.Handle(health.GRPC, grpcprobe.Prober{})
	p.checks.SetMaxChecks(o.maxChecks)
	if execProber != nil {
		p.checks.Handle(health.Exec, execProber)
	} else {
		p.checks.Disable(health.Exec, "not run: exec health checks are off on this node (merlin -health-exec-dir)")
	}
}

// rereadOnHangup re-reads the command line and the config file on SIGHUP
// and applies what applies live: the bgp section and the node's labels.
func (p *nodeParts) rereadOnHangup(ctx context.Context, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		o, err := parseFlags(p.args)
		if err != nil {
			log.Error("SIGHUP: configuration not re-read; keeping the running one", "error", err)
			continue
		}
		log.Info("SIGHUP: configuration re-read; the bgp section and -node-labels apply now, other settings at the next start", "config", o.configFile)
		p.bgpApplier.SetNode(nodeBGP{file: o.bgpFile, node: o.node, labels: o.labels})
	}
}

// warmUp is the connection sync warm-up gate (nil without sync: a nil
// interface, not a nil pointer in one).
func (p *nodeParts) warmUp() node.WarmUp {
	if p.syncSink == nil {
		return nil
	}
	return p.syncSink
}

// warnEmptyPrefix: no desired state at all is a new cluster — or the
// original Merlin's state in etcd's v2 store (its default backend), which
// merlin does not read: an old unit without -store-backend was on etcd2.
func warnEmptyPrefix(log *slog.Logger, prefix string) {
	log.Warn("no services under the prefix in etcd (v3): a new cluster, or state merlin cannot see — another -store-prefix, or the original Merlin's etcd2 store (its default backend): copy it into v3 with `etcdctl migrate` (etcd 3.4) first; merlin reads the base64 values it leaves", "prefix", prefix)
}

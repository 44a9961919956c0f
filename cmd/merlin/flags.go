package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/xdpstats"
	"github.com/merlin-ipvs/merlin/model"
)

// options are merlin's settings: flags, over the -config file's.
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
	maxConnsPerSource  int
	snapshotStall      time.Duration
	storeQuota         int64
	idleTimeout        time.Duration
	configFile         string
	node               string
	reconcile          bool
	resync             time.Duration
	adopt              string
	guardFraction      float64
	guardMin           int
	bandwidthCapacity  float64
	bandwidthInterval  time.Duration
	vipInterface       string
	sysctls            bool
	advertise          string
	bgpFile            bgpFile // the file's bgp section, then the -bgp-* flags
	bgp                *bgp.Config
	counterFlags       counterFlags
	metricsReadTimeout time.Duration
	metricsInterval    time.Duration
	metricsFamilies    []string // per-backend families exported
	execDir            string
	execUser           string
	maxChecks          int
	counters           *xdpstats.Config // nil: no eBPF counters
	warnings           []string         // weakening settings, for node status
	notices            []string         // said once at start: file settings the command line overrides
	nodeLabels         string
	syncFlags          syncFlags
	sync               []ipvs.SyncDaemon // master and backup; nil: connection sync off
	labels             map[string]string // parsed -node-labels
	args               []string          // the command line, re-read on SIGHUP
}

// parseFlags reads the command line (and the -config file it names) and
// checks every setting before anything starts.
func parseFlags(args []string) (*options, error) {
	o := &options{args: args}
	fs := flag.NewFlagSet("merlin", flag.ContinueOnError)
	var bf bgpFile
	var peers peerFlags
	registerFlags(fs, o)
	registerNodeFlags(fs, o)
	registerBGPFlags(fs, &bf, &peers)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.configFile != "" {
		if err := applyConfigFile(fs, o.configFile, &o.bgpFile, &o.notices); err != nil {
			return nil, err
		}
	}
	mergeBGPFlags(fs, &o.bgpFile, bf, peers)
	if err := checkOptions(fs, o); err != nil {
		return nil, err
	}
	return o, nil
}

// registerFlags: the API, the store and logging.
func registerFlags(fs *flag.FlagSet, o *options) {
	fs.BoolVar(&o.debug, "debug", false, "debug logs")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.Bool("print-config-template", false, "print every setting as a commented configuration file and exit")
	fs.Bool("print-man", false, "print the man page (roff) and exit")
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
	fs.StringVar(&o.apiReaders, "api-readers", "", "comma-separated client identities (certificate CN or SAN; * any) that may List, ListPage, GetService, Watch, Status and Stats; with -api-writers set, everyone else is refused")
	fs.StringVar(&o.apiWriters, "api-writers", "", "comma-separated client identities that may also change the desired state; empty with -api-readers empty: every client the TLS CA admits")
	fs.IntVar(&o.maxMessage, "max-message-bytes", 16<<20, "largest gRPC message accepted or sent")
	fs.UintVar(&o.maxStreams, "max-concurrent-streams", 256, "concurrent gRPC streams per client connection")
	fs.IntVar(&o.maxConns, "max-connections", 1024, "concurrent API client connections; more are closed at once and counted (merlin_api_connections_refused_total)")
	fs.IntVar(&o.maxConnsPerSource, "max-connections-per-source", 64, "concurrent API client connections from one source (an IPv4 address, an IPv6 /64); more are closed at once and counted, so one host cannot lock the others out (0: no such cap)")
	fs.DurationVar(&o.snapshotStall, "watch-snapshot-stall", 30*time.Second, "a Watch client that reads nothing of its snapshot for this long is cut off (it holds a copy of the table)")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 5*time.Minute, "close an API connection without streams after this long")
	fs.StringVar(&o.configFile, "config", "", "YAML file of flag settings (keys are flag names); flags on the command line win")
}

// registerNodeFlags: the node's reconciliation, health checks and counters.
func registerNodeFlags(fs *flag.FlagSet, o *options) {
	host, _ := os.Hostname()
	fs.StringVar(&o.node, "node", host, "this node's name in node status")
	fs.BoolVar(&o.reconcile, "reconcile", true, "make this node's IPVS table match the desired state")
	fs.DurationVar(&o.resync, "reconcile-sync-period", 30*time.Second, "how often to read the whole kernel table and repair changes made behind merlin's back")
	fs.StringVar(&o.adopt, "adopt", "", "comma-separated prefixes: existing kernel services with a desired VIP inside them are taken over")
	fs.Float64Var(&o.bandwidthCapacity, "link-bandwidth-capacity", 1, "BGP link bandwidth: this node's capacity factor; a VIP is announced with 1 Mbit/s per unit of healthy server weight × this (for services with announce.link_bandwidth)")
	fs.DurationVar(&o.bandwidthInterval, "link-bandwidth-interval", node.DefaultBandwidthInterval, "BGP link bandwidth: a VIP's bandwidth changes on the routers at most this often when health or weights move it")
	fs.Float64Var(&o.guardFraction, "deletion-guard-fraction", 0.5, "hold back a desired state deleting more than this share of the owned services at once (negative: off)")
	fs.IntVar(&o.guardMin, "deletion-guard-min", 3, "... and at least this many")
	fs.StringVar(&o.vipInterface, "vip-interface", "", "put the VIPs on this dummy interface (created if missing); empty: leave addresses alone")
	fs.BoolVar(&o.sysctls, "director-sysctls", false, "set the sysctls an IPVS director needs (vs/conntrack, expire_nodest_conn, expire_quiescent_template, ip_forward)")
	o.syncFlags.register(fs)
	fs.StringVar(&o.nodeLabels, "node-labels", "", "comma-separated key=value labels of this node: cluster BGP peers select nodes by them (meradm bgp peer add --node-label); re-read on SIGHUP")
	fs.StringVar(&o.advertise, "advertise-address", "", "address:port other nodes' clients reach this node's API at (node status); default the listen address")
	fs.StringVar(&o.execDir, "health-exec-dir", "", "run exec health checks: only programs in this directory (root's, like its programs), no shell; empty: exec checks are not run on this node (their servers are down with the reason)")
	fs.StringVar(&o.execUser, "health-exec-user", "nobody", "the unprivileged user exec health checks run as")
	fs.IntVar(&o.maxChecks, "health-max-checks", 16384, "most distinct health checks this node runs; the others are not run (their servers stay down with the reason)")
	o.counterFlags.register(fs)
	fs.DurationVar(&o.metricsReadTimeout, "metrics-read-timeout", node.DefaultReadTimeout, "bound on one background read of the kernel's IPVS counters (a read cut short exports what it got and merlin_ipvs_stats_up 0)")
	fs.DurationVar(&o.metricsInterval, "metrics-read-interval", node.DefaultReadInterval, "pause between background reads of the kernel's IPVS counters and the eBPF counters; scrapes export the last read and its age (merlin_ipvs_stats_age_seconds, merlin_counters_age_seconds)")
	o.metricsFamilies = slices.Clone(node.DefaultBackendFamilies)
	fs.Var(&familiesFlag{names: &o.metricsFamilies, text: "default"}, "metrics-backend-families", "comma-separated per-backend metric families to export (one series per real server each): names, default (those the shipped dashboard and alerts read: "+
		strings.Join(node.DefaultBackendFamilies, ", ")+"), all or none")
}

// registerBGPFlags: the -bgp-* flags, laid over the file's bgp section.
func registerBGPFlags(fs *flag.FlagSet, bf *bgpFile, peers *peerFlags) {
	fs.Func("bgp-local-as", "BGP: this node's AS number (BGP is off without it; peers and the rest go in the config file's bgp section)", func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		bf.LocalAS = uint32(n)
		return err
	})
	fs.StringVar(&bf.RouterID, "bgp-router-id", "", "BGP: router ID (an IPv4 address of this node)")
	fs.IntVar(&bf.ListenPort, "bgp-listen-port", 0, "BGP: port to accept sessions on (0: dial out only; passive peers need it)")
	fs.StringVar(&bf.NextHopIPv6, "bgp-next-hop-ipv6", "", "BGP: next hop of IPv6 VIPs announced over IPv4 sessions")
	fs.Var(peers, "bgp-peer", "BGP peer, repeatable: address=IP,as=N[,port=,local_address=,password_file=,hold_time=,keepalive_time=,connect_retry=,multihop_ttl=,passive,graceful_restart=,families=ipv4-unicast+ipv6-unicast,max_prefixes=,max_prefixes_restart=1m,bfd,bfd_min_tx=300ms,bfd_min_rx=300ms,bfd_multiplier=3]")
}

// checkOptions refuses settings that cannot work, naming the setting.
func checkOptions(fs *flag.FlagSet, o *options) error {
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return errors.New("-tls-cert and -tls-key go together")
	}
	if o.tlsClientCA != "" && o.tlsCert == "" {
		return errors.New("-tls-client-ca needs -tls-cert and -tls-key")
	}
	switch o.storeBackend {
	case "etcd3":
	case "etcd2", "etcd":
		return fmt.Errorf("-store-backend %s: merlin stores its state in etcd's v3 API only; copy the original's keys into v3 with `etcdctl migrate --data-dir DIR` (etcd 3.4, etcd stopped; merlin reads the base64 values it leaves) and start with -store-backend etcd3 (or leave it out)", o.storeBackend)
	default:
		return fmt.Errorf("-store-backend %q: want etcd3", o.storeBackend)
	}
	if err := checkStoreFlags(o); err != nil {
		return err
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return fmt.Errorf("-log-format %q: want text or json", o.logFormat)
	}
	if o.port <= 0 || o.port > 65535 {
		return fmt.Errorf("-port %d: want 1 to 65535", o.port)
	}
	if o.healthPort < 0 || o.healthPort > 65535 {
		return fmt.Errorf("-health-port %d: want 0 (off) or 1 to 65535", o.healthPort)
	}
	if err := checkAPIFlags(o); err != nil {
		return err
	}
	return checkNodeFlags(o)
}

// checkAPIFlags: the API's address and its client authentication.
func checkAPIFlags(o *options) error {
	if o.apiAddress == "" {
		o.apiAddress = "127.0.0.1"
		if o.tlsClientCA != "" {
			o.apiAddress = "" // every address: clients must show certificates
		}
	}
	if (o.apiReaders != "" || o.apiWriters != "") && o.tlsClientCA == "" {
		return errors.New("-api-readers and -api-writers name client certificates: they need -tls-client-ca")
	}
	if !loopback(o.apiAddress) && o.tlsClientCA == "" && !o.insecureAPI {
		return fmt.Errorf("-api-address %q: a non-loopback API needs client certificates (-tls-cert, -tls-key, -tls-client-ca); -insecure-api allows it without", shorten(o.apiAddress))
	}
	return nil
}

// checkNodeFlags: BGP and the counters, which need a reconciling node.
func checkNodeFlags(o *options) error {
	var err error
	if o.bgp, err = bgpConfig(o.bgpFile); err != nil {
		return err
	}
	if o.counters, err = o.counterFlags.config(); err != nil {
		return err
	}
	if o.counters != nil && !o.reconcile {
		return errors.New("-counters-* with -reconcile=false: the counters count the services this node reconciles")
	}
	if o.bgp != nil && !o.reconcile {
		return errors.New("bgp with -reconcile=false: BGP announces the VIPs this node reconciles; configure one or the other")
	}
	if o.execDir != "" && !o.reconcile {
		return errors.New("-health-exec-dir with -reconcile=false: exec checks are run by a node that reconciles; configure one or the other")
	}
	if o.sync, err = o.syncFlags.daemons(); err != nil {
		return err
	}
	if o.sync != nil && !o.reconcile {
		return errors.New("-sync-interface with -reconcile=false: connection sync runs on a node that reconciles")
	}
	if o.labels, err = parseLabels(o.nodeLabels); err != nil {
		return fmt.Errorf("-node-labels: %w", err)
	}
	if err := model.ValidateID("node", o.node); err != nil {
		return fmt.Errorf("-node: %w", err)
	}
	if f := o.guardFraction; math.IsNaN(f) || f == 0 || f > 1 {
		return fmt.Errorf("-deletion-guard-fraction %v: want a share above 0 up to 1, or negative for off", f)
	}
	if o.guardMin < 0 {
		return fmt.Errorf("-deletion-guard-min %d: want 0 or more", o.guardMin)
	}
	if c := o.bandwidthCapacity; math.IsNaN(c) || c <= 0 || c > node.MaxLinkBandwidthCapacity {
		return fmt.Errorf("-link-bandwidth-capacity %v: want above 0, at most %d", c, node.MaxLinkBandwidthCapacity)
	}
	if i := o.bandwidthInterval; i < 100*time.Millisecond || i > time.Hour {
		return fmt.Errorf("-link-bandwidth-interval %s: want 100ms to 1h", i)
	}
	return nil
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
	case o.maxConnsPerSource < 0 || o.maxConnsPerSource > 1<<20:
		return fmt.Errorf("-max-connections-per-source %d: want 0 (no cap) to %d", o.maxConnsPerSource, 1<<20)
	case o.metricsReadTimeout < 100*time.Millisecond || o.metricsReadTimeout > 10*time.Minute:
		return fmt.Errorf("-metrics-read-timeout %s: want 100ms to 10m", o.metricsReadTimeout)
	case o.metricsInterval < 100*time.Millisecond || o.metricsInterval > time.Hour:
		return fmt.Errorf("-metrics-read-interval %s: want 100ms to 1h", o.metricsInterval)
	case o.maxChecks < 1 || o.maxChecks > 1<<20:
		return fmt.Errorf("-health-max-checks %d: want 1 to %d", o.maxChecks, 1<<20)
	case o.snapshotStall < 100*time.Millisecond || o.snapshotStall > time.Hour:
		return fmt.Errorf("-watch-snapshot-stall %s: want 100ms to 1h", o.snapshotStall)
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

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// applyConfigFile sets every flag the file names that the command line
// did not, and reads its bgp section.
func applyConfigFile(fs *flag.FlagSet, path string, bf *bgpFile, notices *[]string) error {
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
			*notices = append(*notices, fmt.Sprintf("-%s on the command line overrides %q of %s", k, shorten(fmt.Sprint(values[k])), path))
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

// parseLabels reads key=value,key=value.
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range splitList(s) {
		k, v, _ := strings.Cut(kv, "=")
		if err := model.ValidateLabel(k, v); err != nil {
			return nil, err
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%q: given twice", shorten(k))
		}
		out[k] = v
	}
	return out, nil
}

// familiesFlag is -metrics-backend-families: its text as given, parsed.
type familiesFlag struct {
	names *[]string
	text  string
}

func (f *familiesFlag) String() string { return f.text }

func (f *familiesFlag) Set(v string) error {
	names, err := node.ParseBackendFamilies(v)
	if err != nil {
		return err
	}
	*f.names, f.text = names, v
	return nil
}

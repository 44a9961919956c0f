package main

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// editAttempts bounds read-modify-write retries when another client
// changes the same object in between.
const editAttempts = 5

type healthFlags struct {
	throughVIP               bool
	endpoint                 string
	period                   time.Duration
	timeout                  time.Duration
	up, down                 uint32
	method, host             string
	expectStatus, expectBody string
	tlsName                  string
	tlsVerify                bool
	udpSend, udpExpect       string
	command, grpcService     string
	slowStart                time.Duration
	startup                  string
}

func addHealthFlags(f *pflag.FlagSet, h *healthFlags) {
	f.StringVar(&h.endpoint, "health-endpoint", "", "health check endpoint, e.g. http://:8080/health; empty disables the check")
	f.DurationVar(&h.period, "health-period", 0, "time between health checks")
	f.DurationVar(&h.timeout, "health-timeout", 0, "timeout of one health check")
	f.Uint32Var(&h.up, "health-up", 0, "consecutive successes to come up")
	f.Uint32Var(&h.down, "health-down", 0, "consecutive failures to go down")
	f.StringVar(&h.method, "health-method", "", "HTTP method (default GET)")
	f.StringVar(&h.host, "health-host", "", "HTTP Host header")
	f.StringVar(&h.expectStatus, "health-expect-status", "", "expected HTTP status codes, e.g. 200,204,300-399 (default 200-399)")
	f.StringVar(&h.expectBody, "health-expect-body", "", "text the HTTP body must contain")
	f.StringVar(&h.tlsName, "health-tls-name", "", "TLS server name (https, grpc)")
	f.BoolVar(&h.tlsVerify, "health-tls-verify", false, "verify the server certificate (https, grpc)")
	f.StringVar(&h.udpSend, "health-udp-send", "", "UDP payload to send")
	f.StringVar(&h.udpExpect, "health-udp-expect", "", "text the UDP reply must contain")
	f.StringVar(&h.command, "health-command", "", "command of an exec: check (MERLIN_TARGET_IP and MERLIN_TARGET_PORT are set)")
	f.StringVar(&h.grpcService, "health-grpc-service", "", "service name for a grpc:// check")
	f.DurationVar(&h.slowStart, "slow-start", 0, "ramp the weight up over this time after a server comes back up")
	f.StringVar(&h.startup, "startup", "", "state of a newly checked server: kernel (default: as the kernel has it) or down (until checks pass)")
	f.BoolVar(&h.throughVIP, "health-through-vip", false, "probe the VIP (at the endpoint's port) by the server's own path: direct routing or tunnel (not NAT)")
}

// apply sets the health check fields given on the command line.
func (h *healthFlags) apply(f *pflag.FlagSet, hc **types.RealServer_HealthCheck) error {
	changed := func(n string) bool { return f.Changed(n) }
	given := false
	for _, n := range []string{"health-endpoint", "health-period", "health-timeout", "health-up", "health-down", "health-method", "health-host",
		"health-expect-status", "health-expect-body", "health-tls-name", "health-tls-verify", "health-udp-send", "health-udp-expect",
		"health-command", "health-grpc-service", "slow-start", "startup", "health-through-vip"} {
		given = given || changed(n)
	}
	if !given {
		return nil
	}
	if *hc == nil {
		*hc = &types.RealServer_HealthCheck{}
	}
	c := *hc
	if changed("health-endpoint") {
		c.Endpoint = wrapperspb.String(h.endpoint)
	}
	if changed("health-period") {
		c.Period = durationpb.New(h.period)
	}
	if changed("health-timeout") {
		c.Timeout = durationpb.New(h.timeout)
	}
	if changed("health-up") {
		c.UpThreshold = h.up
	}
	if changed("health-down") {
		c.DownThreshold = h.down
	}
	set := func(name string, dst *string, v string) {
		if changed(name) {
			*dst = v
		}
	}
	set("health-method", &c.Method, strings.ToUpper(h.method))
	set("health-host", &c.Host, h.host)
	set("health-expect-status", &c.ExpectStatus, h.expectStatus)
	set("health-expect-body", &c.ExpectBody, h.expectBody)
	set("health-tls-name", &c.TlsServerName, h.tlsName)
	set("health-udp-send", &c.UdpSend, h.udpSend)
	set("health-udp-expect", &c.UdpExpect, h.udpExpect)
	set("health-command", &c.Command, h.command)
	set("health-grpc-service", &c.GrpcService, h.grpcService)
	if changed("health-tls-verify") {
		c.TlsVerify = h.tlsVerify
	}
	if changed("slow-start") {
		c.SlowStart = durationpb.New(h.slowStart)
	}
	if changed("health-through-vip") {
		c.ThroughVip = wrapperspb.Bool(h.throughVIP)
	}
	if changed("startup") {
		st, err := parseStartup(h.startup)
		if err != nil {
			return err
		}
		c.Startup = st
	}
	return nil
}

func parseStartup(s string) (types.RealServer_Startup, error) {
	switch strings.ToLower(s) {
	case "", "kernel", "from-kernel", "from_kernel":
		return types.RealServer_FROM_KERNEL, nil
	case "down":
		return types.RealServer_DOWN, nil
	}
	return 0, fmt.Errorf("invalid startup %q: want kernel or down", s)
}

// parseAddrPort accepts IP:PORT and [IPv6]:PORT.
func parseAddrPort(field, s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("invalid %s %q: want IP:PORT or [IPv6]:PORT", field, s)
	}
	return ap, nil
}

// parseNetmask accepts a prefix length (24, 64) or a dotted IPv4 mask.
func parseNetmask(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 8); err == nil {
		return uint32(n), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return 0, fmt.Errorf("invalid netmask %q: want a prefix length or a dotted IPv4 mask", s)
	}
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := uint32(0)
	for v&0x80000000 != 0 {
		ones++
		v <<= 1
	}
	if v != 0 {
		return 0, fmt.Errorf("invalid netmask %q: not contiguous", s)
	}
	return ones, nil
}

type serviceFlags struct {
	scheduler  string
	flags      []string
	persistent string
	netmask    string
	ops        bool
	engine     string
	forward    string
	ipv6       bool
	health     healthFlags
	announce   announceFlags
	passive    passiveFlags
	threshold  thresholdFlags
}

// passiveFlags are a service's passive health settings.
type passiveFlags struct {
	enabled     bool
	window      time.Duration
	minAttempts uint32
	maxFailed   uint32
}

func (p *passiveFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&p.enabled, "passive-health", false, "judge NAT servers by the connections they answer too (needs an active check and the nodes' eBPF counters)")
	f.DurationVar(&p.window, "passive-window", 0, "passive health: how far back connection attempts count (default 10s)")
	f.Uint32Var(&p.minAttempts, "passive-min-attempts", 0, "passive health: attempts in the window before a server is judged (default 5)")
	f.Uint32Var(&p.maxFailed, "passive-max-failed-percent", 0, "passive health: a larger share of unanswered or refused attempts fails a check (default 50)")
}

// apply sets the passive health settings given on the command line.
func (p *passiveFlags) apply(f *pflag.FlagSet, svc *types.VirtualService) {
	if !f.Changed("passive-health") && !f.Changed("passive-window") && !f.Changed("passive-min-attempts") && !f.Changed("passive-max-failed-percent") {
		return
	}
	if svc.PassiveHealth == nil {
		svc.PassiveHealth = &types.PassiveHealth{}
	}
	ph := svc.PassiveHealth
	if f.Changed("passive-health") {
		ph.Enabled = wrapperspb.Bool(p.enabled)
	}
	if f.Changed("passive-window") {
		ph.Window = durationpb.New(p.window)
	}
	if f.Changed("passive-min-attempts") {
		ph.MinAttempts = wrapperspb.UInt32(p.minAttempts)
	}
	if f.Changed("passive-max-failed-percent") {
		ph.MaxFailedPercent = wrapperspb.UInt32(p.maxFailed)
	}
}

// announceFlags are a service's BGP options.
type announceFlags struct {
	always        bool
	communities   []string
	large         []string
	localPref     uint32
	linkBandwidth bool
}

func addServiceFlags(f *pflag.FlagSet, s *serviceFlags) {
	f.StringVarP(&s.scheduler, "scheduler", "s", "", "scheduler: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos (service add: wlc, as ipvsadm)")
	f.StringSliceVarP(&s.flags, "scheduler-flags", "b", nil, "scheduler flags: flag-1,flag-2,flag-3, sh-fallback,sh-port, mh-fallback,mh-port")
	f.StringVarP(&s.persistent, "persistent", "p", "", "persistence timeout in seconds (0 turns persistence off)")
	f.Lookup("persistent").NoOptDefVal = "300"
	f.StringVarP(&s.netmask, "netmask", "M", "", "persistence granularity: prefix length or dotted IPv4 mask")
	f.BoolVarP(&s.ops, "ops", "o", false, "one-packet scheduling (UDP)")
	f.StringVar(&s.engine, "pe", "", "persistence engine (sip)")
	f.StringVar(&s.forward, "forward-method", "", "default forward method of its servers: route, tunnel or masq")
	f.BoolVar(&s.announce.always, "bgp-always", false, "BGP: announce the VIP even while no server is healthy")
	f.StringSliceVar(&s.announce.communities, "bgp-community", nil, "BGP: communities of the VIP's route, ASN:VALUE (empty: none)")
	f.StringSliceVar(&s.announce.large, "bgp-large-community", nil, "BGP: large communities, GLOBAL:LOCAL1:LOCAL2 (empty: none)")
	f.Uint32Var(&s.announce.localPref, "bgp-local-pref", 0, "BGP: local preference sent to iBGP peers")
	f.BoolVar(&s.announce.linkBandwidth, "bgp-link-bandwidth", false, "BGP: send the link-bandwidth community (healthy capacity, for weighted ECMP); unset: the cluster's default (meradm bgp settings --link-bandwidth)")
	s.passive.register(f)
	s.threshold.register(f)
	addHealthFlags(f, &s.health)
}

// apply sets the BGP options given on the command line.
func (a *announceFlags) apply(f *pflag.FlagSet, svc *types.VirtualService) {
	if !f.Changed("bgp-always") && !f.Changed("bgp-community") && !f.Changed("bgp-large-community") && !f.Changed("bgp-local-pref") && !f.Changed("bgp-link-bandwidth") {
		return
	}
	if svc.Announce == nil {
		svc.Announce = &types.Announce{}
	}
	if f.Changed("bgp-always") {
		svc.Announce.Always = a.always
	}
	if f.Changed("bgp-community") {
		svc.Announce.Communities = nonEmpty(a.communities)
	}
	if f.Changed("bgp-large-community") {
		svc.Announce.LargeCommunities = nonEmpty(a.large)
	}
	if f.Changed("bgp-local-pref") {
		svc.Announce.LocalPreference = wrapperspb.UInt32(a.localPref)
	}
	if f.Changed("bgp-link-bandwidth") {
		svc.Announce.LinkBandwidth = wrapperspb.Bool(a.linkBandwidth)
	}
}

func nonEmpty(in []string) []string {
	var out []string
	for _, s := range in {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// apply sets the service fields given on the command line.
func (s *serviceFlags) apply(f *pflag.FlagSet, svc *types.VirtualService) error {
	if svc.Config == nil {
		svc.Config = &types.VirtualService_Config{}
	}
	c := svc.Config
	if f.Changed("scheduler") {
		c.Scheduler = s.scheduler
	}
	if f.Changed("scheduler-flags") {
		// Persistence and one-packet have flags of their own here.
		kept := []string{}
		for _, fl := range c.Flags {
			if fl == "persistent" || fl == "one-packet" {
				kept = append(kept, fl)
			}
		}
		c.Flags = append(kept, s.flags...)
	}
	if f.Changed("persistent") {
		t, err := strconv.ParseUint(s.persistent, 10, 32)
		if err != nil {
			return fmt.Errorf("-p/--persistent %q: want a timeout in seconds, 0 or more", shorten(s.persistent))
		}
		c.Flags = without(c.Flags, "persistent")
		if t == 0 {
			c.PersistenceTimeout, c.PersistenceNetmask = nil, nil
		} else {
			c.PersistenceTimeout = wrapperspb.UInt32(uint32(t))
		}
	}
	if f.Changed("netmask") {
		n, err := parseNetmask(s.netmask)
		if err != nil {
			return err
		}
		c.PersistenceNetmask = wrapperspb.UInt32(n)
	}
	if f.Changed("ops") {
		c.Flags = without(c.Flags, "one-packet")
		c.OnePacket = nil
		if s.ops {
			c.OnePacket = wrapperspb.Bool(true)
		}
	}
	if f.Changed("pe") {
		c.PersistenceEngine = s.engine
	}
	if f.Changed("forward-method") {
		if svc.Defaults == nil {
			svc.Defaults = &types.VirtualService_ServerDefaults{}
		}
		if s.forward == "" {
			svc.Defaults.Forward = types.ForwardMethod_UNSET_FORWARD_METHOD
		} else {
			fm, err := model.ParseForward(s.forward)
			if err != nil {
				return err
			}
			svc.Defaults.Forward = fm
		}
	}
	s.announce.apply(f, svc)
	s.passive.apply(f, svc)
	if err := s.threshold.apply(f, svc); err != nil {
		return err
	}
	if svc.Defaults == nil {
		svc.Defaults = &types.VirtualService_ServerDefaults{}
	}
	return s.health.apply(f, &svc.Defaults.HealthCheck)
}

func without(flags []string, name string) []string {
	out := flags[:0:0]
	for _, f := range flags {
		if f != name {
			out = append(out, f)
		}
	}
	return out
}

func serviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "service [add|edit|del]", Short: "Modify a virtual service", Args: cobra.NoArgs, RunE: groupHelp}
	var add, edit serviceFlags
	addCmd := &cobra.Command{
		Use:   "add ID PROTOCOL VIP:PORT | add ID fwmark MARK",
		Short: "Add a virtual service (protocol tcp, udp or sctp; or a firewall mark)",
		Example: `  meradm service add web tcp 198.18.0.10:80 -s wrr
  meradm service add dns udp [2001:db8::53]:53 -s mh -b mh-port -o
  meradm service add marked fwmark 7 -s rr -p 600 -M 24`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc := &types.VirtualService{Id: args[0], Key: &types.VirtualService_Key{}}
			switch strings.ToLower(args[1]) {
			case "fwmark", "fwm":
				mark, err := strconv.ParseUint(args[2], 0, 32)
				if err != nil || mark == 0 {
					return fmt.Errorf("invalid firewall mark %q: want a number from 1", args[2])
				}
				svc.Key.Fwmark, svc.Key.Family = uint32(mark), types.AddressFamily_IPV4
				if add.ipv6 {
					svc.Key.Family = types.AddressFamily_IPV6
				}
			default:
				p, ok := types.Protocol_value[strings.ToUpper(args[1])]
				if !ok || p == 0 {
					return fmt.Errorf("invalid protocol %q: want tcp, udp, sctp or fwmark", args[1])
				}
				ap, err := parseAddrPort("VIP:PORT", args[2])
				if err != nil {
					return err
				}
				svc.Key.Protocol, svc.Key.Ip, svc.Key.Port = types.Protocol(p), ap.Addr().String(), uint32(ap.Port())
			}
			if !cmd.Flags().Changed("scheduler") {
				add.scheduler = "wlc" // ipvsadm's default
				_ = cmd.Flags().Set("scheduler", "wlc")
			}
			if err := add.apply(cmd.Flags(), svc); err != nil {
				return err
			}
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				_, err := c.CreateService(ctx, svc)
				return err
			})
		},
	}
	addServiceFlags(addCmd.Flags(), &add)
	addCmd.Flags().BoolVarP(&add.ipv6, "ipv6", "6", false, "IPv6 firewall-mark service")

	editCmd := &cobra.Command{
		Use:               "edit ID",
		ValidArgsFunction: g.completeFromAPI(false),
		Short:             "Edit a virtual service (only the flags given change)",
		Args:              cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				return retryOnConflict(func() error {
					item, err := c.GetService(ctx, wrapperspb.String(args[0]))
					if status.Code(err) == codes.FailedPrecondition {
						// Stored invalid (the original Merlin accepted it): a
						// merge of the flags given, which may make it valid.
						svc := &types.VirtualService{Id: args[0]}
						if err := edit.apply(cmd.Flags(), svc); err != nil {
							return err
						}
						_, err = c.UpdateService(ctx, svc)
						return err
					}
					if err != nil {
						return err
					}
					svc := item.Service
					if err := edit.apply(cmd.Flags(), svc); err != nil {
						return err
					}
					_, err = c.UpdateService(ctx, svc) // carries the revision read: all or nothing
					return err
				})
			})
		},
	}
	addServiceFlags(editCmd.Flags(), &edit)

	delCmd := &cobra.Command{
		Use:               "del ID",
		Aliases:           []string{"delete", "rm"},
		ValidArgsFunction: g.completeFromAPI(false),
		Short:             "Delete a virtual service and all its servers",
		Args:              cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				_, err := c.DeleteService(ctx, wrapperspb.String(args[0]))
				return err
			})
		},
	}
	cmd.AddCommand(addCmd, editCmd, delCmd)
	return cmd
}

// retryOnConflict re-runs a read-modify-write when another client changed
// the object in between (Aborted).
func retryOnConflict(fn func() error) error {
	var err error
	for range editAttempts {
		if err = fn(); status.Code(err) != codes.Aborted {
			return err
		}
	}
	return err
}

type serverFlags struct {
	weight          string
	forward         string
	upper, lower    uint32
	tunType         string
	tunPort         uint16
	tunCsum, remote bool
	health          healthFlags
}

func addServerFlags(f *pflag.FlagSet, s *serverFlags) {
	f.StringVarP(&s.weight, "weight", "w", "", "weight of the real server (0 drains it; default 1)")
	f.StringVarP(&s.forward, "forward-method", "f", "", "route, tunnel or masq (default: the service's, else route as ipvsadm)")
	f.Uint32VarP(&s.upper, "u-threshold", "x", 0, "upper connection threshold (0: none)")
	f.Uint32VarP(&s.lower, "l-threshold", "y", 0, "lower connection threshold")
	f.StringVar(&s.tunType, "tun-type", "", "tunnel type: ipip, gue or gre")
	f.Uint16Var(&s.tunPort, "tun-port", 0, "GUE destination port")
	f.BoolVar(&s.tunCsum, "tun-csum", false, "tunnel checksums (GUE, GRE)")
	f.BoolVar(&s.remote, "tun-remcsum", false, "tunnel remote checksum offload (GUE)")
	addHealthFlags(f, &s.health)
}

func (s *serverFlags) apply(f *pflag.FlagSet, srv *types.RealServer) error {
	if srv.Config == nil {
		srv.Config = &types.RealServer_Config{}
	}
	c := srv.Config
	if f.Changed("weight") {
		w, err := strconv.ParseUint(s.weight, 10, 32)
		if err != nil {
			return fmt.Errorf("invalid weight %q: want a number from 0 to 65535", s.weight)
		}
		c.Weight = wrapperspb.UInt32(uint32(w))
	}
	if f.Changed("forward-method") {
		fm, err := model.ParseForward(s.forward)
		if err != nil {
			return err
		}
		c.Forward = fm
	}
	if f.Changed("u-threshold") {
		c.UpperThreshold = wrapperspb.UInt32(s.upper)
	}
	if f.Changed("l-threshold") {
		c.LowerThreshold = wrapperspb.UInt32(s.lower)
	}
	if f.Changed("tun-type") {
		t, ok := types.TunnelType_value[strings.ToUpper(s.tunType)]
		if !ok {
			return fmt.Errorf("invalid tunnel type %q: want ipip, gue or gre", s.tunType)
		}
		c.TunnelType = types.TunnelType(t)
	}
	if f.Changed("tun-port") {
		c.TunnelPort = uint32(s.tunPort)
	}
	if f.Changed("tun-csum") {
		c.TunnelChecksum = s.tunCsum
	}
	if f.Changed("tun-remcsum") {
		c.TunnelRemoteChecksum = s.remote
	}
	return s.health.apply(f, &srv.HealthCheck)
}

func serverKey(arg string) (*types.RealServer_Key, error) {
	ap, err := parseAddrPort("IP:PORT", arg)
	if err != nil {
		return nil, err
	}
	return &types.RealServer_Key{Ip: ap.Addr().String(), Port: uint32(ap.Port())}, nil
}

func serverCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "server [add|edit|del|drain]", Short: "Modify a real server", Args: cobra.NoArgs, RunE: groupHelp}
	var add, edit serverFlags
	addCmd := &cobra.Command{
		Use:               "add SERVICE-ID IP:PORT",
		ValidArgsFunction: g.completeFromAPI(false),
		Short:             "Add a real server to a service",
		Example:           "  meradm server add web 198.19.0.2:8080 -w 10 -f masq --health-endpoint http://:8080/health --health-period 2s --health-timeout 1s --health-up 2 --health-down 3",
		Args:              cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := serverKey(args[1])
			if err != nil {
				return err
			}
			srv := &types.RealServer{ServiceID: args[0], Key: key}
			if err := add.apply(cmd.Flags(), srv); err != nil {
				return err
			}
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				if srv.Config.Forward == types.ForwardMethod_UNSET_FORWARD_METHOD {
					// ipvsadm's default is direct routing; the service's own
					// default forward method comes first.
					item, err := c.GetService(ctx, wrapperspb.String(srv.ServiceID))
					if err != nil {
						return err
					}
					if item.Service.GetDefaults().GetForward() == types.ForwardMethod_UNSET_FORWARD_METHOD {
						srv.Config.Forward = types.ForwardMethod_ROUTE
					}
				}
				_, err := c.CreateServer(ctx, srv)
				return err
			})
		},
	}
	addServerFlags(addCmd.Flags(), &add)
	editCmd := &cobra.Command{
		Use:               "edit SERVICE-ID IP:PORT",
		ValidArgsFunction: g.completeFromAPI(true),
		Short:             "Edit a real server (only the flags given change)",
		Args:              cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := serverKey(args[1])
			if err != nil {
				return err
			}
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				return retryOnConflict(func() error {
					item, err := c.GetService(ctx, wrapperspb.String(args[0]))
					if err != nil {
						return err
					}
					for _, srv := range item.Servers {
						if srv.Key.Ip == key.Ip && srv.Key.Port == key.Port {
							if err := edit.apply(cmd.Flags(), srv); err != nil {
								return err
							}
							_, err = c.UpdateServer(ctx, srv) // at the revision read
							return err
						}
					}
					// Not listed: absent, or stored invalid (which a merge
					// of the flags given may make valid); the API says which.
					srv := &types.RealServer{ServiceID: args[0], Key: key}
					if err := edit.apply(cmd.Flags(), srv); err != nil {
						return err
					}
					_, err = c.UpdateServer(ctx, srv)
					return err
				})
			})
		},
	}
	addServerFlags(editCmd.Flags(), &edit)
	delCmd := &cobra.Command{
		Use:               "del SERVICE-ID IP:PORT",
		Aliases:           []string{"delete", "rm"},
		ValidArgsFunction: g.completeFromAPI(true),
		Short:             "Delete a real server",
		Args:              cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := serverKey(args[1])
			if err != nil {
				return err
			}
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				_, err := c.DeleteServer(ctx, &types.RealServer{ServiceID: args[0], Key: key})
				return err
			})
		},
	}
	cmd.AddCommand(addCmd, editCmd, delCmd, serverDrainCmd(g))
	return cmd
}

var emptyRequest = &emptypb.Empty{}

// groupHelp runs for a command group named alone: its help. With an unknown
// subcommand, cobra.NoArgs has already failed ("unknown command").
func groupHelp(cmd *cobra.Command, _ []string) error { return cmd.Help() }

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/merlin-ipvs/merlin/types"
)

// bgpCmd: the cluster's BGP configuration (peers and settings in etcd).
func bgpCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bgp [peer|settings]", Short: "The cluster's BGP peers and settings (applied live by every node they select)", Args: cobra.NoArgs, RunE: groupHelp}
	peer := &cobra.Command{Use: "peer [add|edit|del|list]", Short: "BGP peers (routers) as cluster configuration", Args: cobra.NoArgs, RunE: groupHelp}
	peer.AddCommand(peerAddCmd(g), peerEditCmd(g), peerDelCmd(g), peerListCmd(g))
	cmd.AddCommand(peer, settingsCmd(g))
	return cmd
}

// peerFlags are a peer's settings as flags; only those given apply.
type peerFlags struct {
	address, localAddress, nodePasswordFile, passwordFrom      string
	as, maxPrefixes                                            uint32
	port                                                       uint16
	multihopTTL, bfdMultiplier                                 uint32
	passive, bfd, noPassword                                   bool
	holdTime, keepalive, connectRetry, graceful, prefixRestart time.Duration
	bfdMinTx, bfdMinRx                                         time.Duration
	families, nodes, labels                                    []string
}

func addPeerFlags(f *pflag.FlagSet, p *peerFlags, edit bool) {
	if edit {
		f.StringVar(&p.address, "address", "", "the router's address")
		f.Uint32Var(&p.as, "as", 0, "the router's AS")
	}
	f.Uint16Var(&p.port, "peer-port", 0, "the router's BGP port (0: 179)")
	f.StringVar(&p.localAddress, "local-address", "", "source address of the session (empty: the kernel's choice)")
	f.StringVar(&p.passwordFrom, "password-from", "", "read the TCP-MD5 key from this file's first line (- : standard input) and store it in etcd; never on the command line")
	f.StringVar(&p.nodePasswordFile, "node-password-file", "", "the key is in this file on each node instead (not stored in etcd)")
	f.BoolVar(&p.noPassword, "no-password", false, "no TCP-MD5 key")
	f.DurationVar(&p.holdTime, "hold-time", 0, "hold time (whole seconds; 0: 90s)")
	f.DurationVar(&p.keepalive, "keepalive-time", 0, "keepalive interval (0: a third of the hold time)")
	f.DurationVar(&p.connectRetry, "connect-retry", 0, "wait between connection attempts (0: 5s)")
	f.Uint32Var(&p.multihopTTL, "multihop-ttl", 0, "eBGP multihop TTL (0: directly connected)")
	f.BoolVar(&p.passive, "passive", false, "wait for the router to connect (nodes need bgp listen_port)")
	f.DurationVar(&p.graceful, "graceful-restart", 0, "graceful restart time announced (0: off)")
	f.StringSliceVar(&p.families, "families", nil, "ipv4-unicast, ipv6-unicast (default: as the session's address)")
	f.Uint32Var(&p.maxPrefixes, "max-prefixes", 0, "prefixes the router may send before the session is shut (0: 1000)")
	f.DurationVar(&p.prefixRestart, "max-prefixes-restart", 0, "how long a peer shut for its prefix limit stays down (0: 1m)")
	f.BoolVar(&p.bfd, "bfd", false, "BFD with the router (single-hop)")
	f.DurationVar(&p.bfdMinTx, "bfd-min-tx", 0, "BFD desired min TX interval (0: 300ms)")
	f.DurationVar(&p.bfdMinRx, "bfd-min-rx", 0, "BFD required min RX interval (0: 300ms)")
	f.Uint32Var(&p.bfdMultiplier, "bfd-multiplier", 0, "BFD detect multiplier (0: 3)")
	f.StringArrayVar(&p.nodes, "node", nil, "a node that peers with it (repeatable; none: every node the labels select)")
	f.StringArrayVar(&p.labels, "node-label", nil, "KEY=VALUE a node must declare (merlin -node-labels; repeatable, all must match)")
}

// apply sets on pc the flags given on the command line.
func (p *peerFlags) apply(f *pflag.FlagSet, pc *types.BGPPeerConfig, stdin io.Reader) error {
	dur := func(d time.Duration) *durationpb.Duration {
		if d == 0 {
			return nil
		}
		return durationpb.New(d)
	}
	set := map[string]func(){
		"address": func() { pc.Address = p.address }, "as": func() { pc.As = p.as },
		"peer-port": func() { pc.Port = uint32(p.port) }, "local-address": func() { pc.LocalAddress = p.localAddress },
		"hold-time": func() { pc.HoldTime = dur(p.holdTime) }, "keepalive-time": func() { pc.KeepaliveTime = dur(p.keepalive) },
		"connect-retry": func() { pc.ConnectRetry = dur(p.connectRetry) }, "multihop-ttl": func() { pc.MultihopTtl = p.multihopTTL },
		"passive": func() { pc.Passive = p.passive }, "graceful-restart": func() { pc.GracefulRestart = dur(p.graceful) },
		"families": func() { pc.Families = p.families }, "max-prefixes": func() { pc.MaxPrefixes = p.maxPrefixes },
		"max-prefixes-restart": func() { pc.MaxPrefixesRestart = dur(p.prefixRestart) },
		"bfd-min-tx":           func() { pc.BfdMinTx = dur(p.bfdMinTx) }, "bfd-min-rx": func() { pc.BfdMinRx = dur(p.bfdMinRx) },
		"bfd-multiplier": func() { pc.BfdMultiplier = p.bfdMultiplier }, "node": func() { pc.Nodes = p.nodes },
		"bfd": func() {
			if pc.Bfd = p.bfd; !p.bfd {
				pc.BfdMinTx, pc.BfdMinRx, pc.BfdMultiplier = nil, nil, 0
			}
		},
		"node-password-file": func() { pc.PasswordFile, pc.Password = p.nodePasswordFile, "" },
		"no-password":        func() { pc.Password, pc.PasswordFile = "", "" },
	}
	f.Visit(func(fl *pflag.Flag) {
		if fn := set[fl.Name]; fn != nil {
			fn()
		}
	})
	if f.Changed("node-label") {
		pc.NodeLabels = map[string]string{}
		for _, kv := range p.labels {
			k, v, _ := strings.Cut(kv, "=")
			pc.NodeLabels[k] = v
		}
	}
	if p.passwordFrom != "" {
		key, err := readKey(p.passwordFrom, stdin)
		if err != nil {
			return fmt.Errorf("--password-from: %w", err)
		}
		pc.Password, pc.PasswordFile = key, ""
	}
	return nil
}

// readKey reads a TCP-MD5 key: the first line of a file or of stdin.
func readKey(path string, stdin io.Reader) (string, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return "", err
		}
		defer f.Close()
		r = f
	}
	line, err := bufio.NewReader(io.LimitReader(r, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	if line = strings.TrimRight(line, "\r\n"); line == "" {
		return "", errors.New("empty key")
	}
	return line, nil
}

func peerAddCmd(g *globals) *cobra.Command {
	var p peerFlags
	cmd := &cobra.Command{
		Use:   "add NAME ADDRESS AS",
		Short: "Add a BGP peer: every node it selects peers with it at once",
		Example: `  meradm bgp peer add tor-a 198.18.6.1 65000 --bfd --hold-time 9s --node-label rack=r1
  meradm bgp peer add tor-b 2001:db8:6::1 65000 --password-from /etc/merlin/tor-b.key`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			as, err := strconv.ParseUint(args[2], 10, 32)
			if err != nil {
				return fmt.Errorf("invalid AS %q: want 1 to 4294967295", shorten(args[2]))
			}
			pc := &types.BGPPeerConfig{Name: args[0], Address: args[1], As: uint32(as)}
			if err := p.apply(cmd.Flags(), pc, cmd.InOrStdin()); err != nil {
				return err
			}
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				_, err := c.PutBGPPeer(ctx, &types.PutBGPPeerRequest{Peer: pc, Create: true})
				return err
			})
		},
	}
	addPeerFlags(cmd.Flags(), &p, false)
	return cmd
}

func peerEditCmd(g *globals) *cobra.Command {
	var p peerFlags
	cmd := &cobra.Command{
		Use:   "edit NAME",
		Short: "Change a BGP peer (only the flags given change; its sessions start again, no other moves)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				return retryOnConflict(func() error {
					pc, err := findPeer(ctx, c, args[0])
					if err != nil {
						return err
					}
					if err := p.apply(cmd.Flags(), pc, cmd.InOrStdin()); err != nil {
						return err
					}
					keep := pc.PasswordSet && pc.Password == "" && !cmd.Flags().Changed("no-password") && pc.PasswordFile == ""
					pc.PasswordSet = false
					_, err = c.PutBGPPeer(ctx, &types.PutBGPPeerRequest{Peer: pc, KeepPassword: keep}) // at the revision read
					return err
				})
			})
		},
	}
	addPeerFlags(cmd.Flags(), &p, true)
	return cmd
}

func findPeer(ctx context.Context, c types.MerlinClient, name string) (*types.BGPPeerConfig, error) {
	cfg, err := c.ListBGP(ctx, &emptypb.Empty{})
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(cfg.GetPeers(), func(p *types.BGPPeerConfig) bool { return p.GetName() == name })
	if i < 0 {
		return nil, fmt.Errorf("bgp peer %q: not found", shorten(name))
	}
	return cfg.GetPeers()[i], nil
}

func peerDelCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "del NAME",
		Aliases: []string{"delete", "rm"},
		Short:   "Remove a BGP peer: the nodes close their sessions with it",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				_, err := c.DeleteBGPPeer(ctx, &types.DeleteBGPPeerRequest{Name: args[0]})
				return err
			})
		},
	}
}

func peerListCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the cluster's BGP settings and peers (passwords are never shown)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				cfg, err := c.ListBGP(ctx, &emptypb.Empty{})
				if err != nil {
					return err
				}
				if output != "" {
					return printMessage(g.out, output, cfg)
				}
				printPeers(g.out, cfg)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "json or yaml: the whole configuration")
	return cmd
}

func printPeers(w io.Writer, cfg *types.BGPConfig) {
	s := cfg.GetSettings()
	fmt.Fprintf(w, "local AS %s, router id %s, listen port %s\n", orNodes(s.GetLocalAs()), orText(s.GetRouterIdPrefix(), "from each node's file", "the node's address in "), orNodes(s.GetListenPort()))
	if s.GetLinkBandwidth() {
		fmt.Fprintln(w, "link bandwidth: sent by default (services may say otherwise)")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tAS\tPASSWORD\tBFD\tHOLD\tNODES")
	for _, p := range cfg.GetPeers() {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", p.GetName(), p.GetAddress(), p.GetAs(), passwordNote(p), peerBFDNote(p), holdNote(p), selectorNote(p))
	}
	tw.Flush()
}

func orNodes(n uint32) string {
	if n == 0 {
		return "from each node's file"
	}
	return strconv.FormatUint(uint64(n), 10)
}

func orText(s, none, prefix string) string {
	if s == "" {
		return none
	}
	return prefix + s
}

func passwordNote(p *types.BGPPeerConfig) string {
	switch {
	case p.GetPasswordSet():
		return "set"
	case p.GetPasswordFile() != "":
		return "file " + p.GetPasswordFile()
	}
	return "-"
}

func peerBFDNote(p *types.BGPPeerConfig) string {
	if !p.GetBfd() {
		return "-"
	}
	tx, rx, m := 300*time.Millisecond, 300*time.Millisecond, uint32(3)
	if p.GetBfdMinTx() != nil {
		tx = p.GetBfdMinTx().AsDuration()
	}
	if p.GetBfdMinRx() != nil {
		rx = p.GetBfdMinRx().AsDuration()
	}
	if p.GetBfdMultiplier() != 0 {
		m = p.GetBfdMultiplier()
	}
	return fmt.Sprintf("%s/%s×%d", tx, rx, m)
}

func holdNote(p *types.BGPPeerConfig) string {
	if p.GetHoldTime() == nil {
		return "90s"
	}
	return p.GetHoldTime().AsDuration().String()
}

func selectorNote(p *types.BGPPeerConfig) string {
	var parts []string
	if len(p.GetNodes()) > 0 {
		parts = append(parts, strings.Join(p.GetNodes(), ","))
	}
	for _, k := range slices.Sorted(maps.Keys(p.GetNodeLabels())) {
		parts = append(parts, k+"="+p.GetNodeLabels()[k])
	}
	if len(parts) == 0 {
		return "all"
	}
	return strings.Join(parts, " ")
}

func settingsCmd(g *globals) *cobra.Command {
	var localAS, listenPort uint32
	var linkBandwidth bool
	var prefix string
	cmd := &cobra.Command{
		Use:   "settings",
		Short: "Show or set the cluster's BGP settings (each node's own file overrides them)",
		Example: `  meradm bgp settings --local-as 65001 --router-id-prefix 198.18.0.0/24
  meradm bgp settings`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				return retryOnConflict(func() error {
					cfg, err := c.ListBGP(ctx, &emptypb.Empty{})
					if err != nil {
						return err
					}
					s := cfg.GetSettings()
					if s == nil {
						s = &types.BGPSettings{}
					}
					if cmd.Flags().NFlag() == 0 {
						printPeers(g.out, &types.BGPConfig{Settings: s})
						return nil
					}
					f := cmd.Flags()
					if f.Changed("local-as") {
						s.LocalAs = localAS
					}
					if f.Changed("router-id-prefix") {
						s.RouterIdPrefix = prefix
					}
					if f.Changed("listen-port") {
						s.ListenPort = listenPort
					}
					if f.Changed("link-bandwidth") {
						s.LinkBandwidth = linkBandwidth
					}
					_, err = c.SetBGPSettings(ctx, s)
					return err
				})
			})
		},
	}
	cmd.Flags().Uint32Var(&localAS, "local-as", 0, "the nodes' AS (0: each node's file says)")
	cmd.Flags().StringVar(&prefix, "router-id-prefix", "", "a node takes as router id its IPv4 address in this prefix")
	cmd.Flags().Uint32Var(&listenPort, "listen-port", 0, "port for passive peers (0: each node's file says)")
	cmd.Flags().BoolVar(&linkBandwidth, "link-bandwidth", false, "services send the link-bandwidth community unless they say otherwise (weighted ECMP; docs/bgp.md)")
	return cmd
}

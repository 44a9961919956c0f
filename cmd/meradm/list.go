package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

func addOutputFlag(cmd *cobra.Command, out *string) {
	cmd.Flags().StringVarP(out, "output", "o", "table", "output format: table, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
}

// printMessage writes m as JSON or YAML (the protobuf JSON mapping).
func printMessage(w io.Writer, format string, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	switch format {
	case "json":
		_, err = fmt.Fprintln(w, string(b))
	case "yaml":
		y, yerr := yaml.JSONToYAML(b)
		if yerr != nil {
			return fmt.Errorf("encode output: %w", yerr)
		}
		_, err = w.Write(y)
	default:
		return fmt.Errorf("invalid output format %q: want table, json or yaml", format)
	}
	return err
}

func listCmd(g *globals) *cobra.Command {
	var output string
	var stats, rate bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List virtual services and their real servers (like ipvsadm -Ln)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				if stats || rate {
					nodes, err := nodeStats(ctx, g, c)
					if err != nil {
						return err
					}
					if output != "table" {
						for _, n := range nodes {
							if err := printMessage(g.out, output, n); err != nil {
								return err
							}
						}
						return nil
					}
					printStats(g.out, nodes, rate)
					return nil
				}
				resp, err := listAll(ctx, c)
				if err != nil {
					return err
				}
				if output != "table" {
					return printMessage(g.out, output, resp)
				}
				return printTable(g.out, resp.Items, resp.InvalidKeys)
			})
		},
	}
	addOutputFlag(cmd, &output)
	cmd.Flags().BoolVar(&stats, "stats", false, "kernel counters of every node (connections, packets, bytes)")
	cmd.Flags().BoolVar(&rate, "rate", false, "kernel rate estimates of every node (per second)")
	return cmd
}

func getCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:               "get SERVICE-ID",
		ValidArgsFunction: g.completeFromAPI(false),
		Short:             "Show one virtual service with its real servers",
		Args:              cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				item, err := c.GetService(ctx, wrapperspb.String(args[0]))
				if err != nil {
					return err
				}
				if output != "table" {
					return printMessage(g.out, output, item)
				}
				return printTable(g.out, []*types.ListResponse_Item{item}, nil)
			})
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

// printTable lays the services out like `ipvsadm -Ln`, with the service
// ID and the health check added.
func printTable(w io.Writer, items []*types.ListResponse_Item, invalid []*types.InvalidKey) error {
	fmt.Fprintln(w, "Prot LocalAddress:Port Scheduler Flags [ID]")
	fmt.Fprintf(w, "  -> %-40s %-7s %-6s %s\n", "RemoteAddress:Port", "Forward", "Weight", "HealthCheck")
	for _, item := range items {
		svc := item.Service
		fmt.Fprintf(w, "%s [%s]\n", serviceLine(svc), svc.Id)
		for _, srv := range item.Servers {
			fmt.Fprintf(w, "  -> %-40s %-7s %-6d %s\n", model.ServerKeyString(srv.Key), model.ForwardListed(model.EffectiveForward(srv, svc)),
				srv.GetConfig().GetWeight().GetValue(), healthText(model.EffectiveHealthCheck(srv, svc)))
		}
	}
	for _, k := range invalid {
		fmt.Fprintf(w, "invalid key %s: %s\n", k.Key, k.Reason)
	}
	return nil
}

func serviceLine(svc *types.VirtualService) string {
	k, c := svc.Key, svc.Config
	var b strings.Builder
	if k.Fwmark != 0 {
		fmt.Fprintf(&b, "FWM  %d", k.Fwmark)
		if k.Family == types.AddressFamily_IPV6 {
			b.WriteString(" IPv6")
		}
	} else {
		addr, _ := netip.ParseAddr(k.Ip)
		fmt.Fprintf(&b, "%-4s %s", k.Protocol.String(), netip.AddrPortFrom(addr, uint16(k.Port)))
	}
	fmt.Fprintf(&b, " %s", c.Scheduler)
	var flags []string
	for _, f := range c.Flags {
		if f != "persistent" && f != "one-packet" {
			flags = append(flags, f)
		}
	}
	if len(flags) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(flags, ","))
	}
	if t := c.PersistenceTimeout.GetValue(); t > 0 {
		fmt.Fprintf(&b, " persistent %d", t)
		if m := c.PersistenceNetmask; m != nil {
			fmt.Fprintf(&b, " mask %d", m.Value)
		}
	}
	if c.PersistenceEngine != "" {
		fmt.Fprintf(&b, " pe %s", c.PersistenceEngine)
	}
	if c.OnePacket.GetValue() {
		b.WriteString(" ops")
	}
	return b.String()
}

func healthText(h *types.RealServer_HealthCheck) string {
	if h.GetEndpoint().GetValue() == "" {
		return "-"
	}
	return fmt.Sprintf("%s every %s timeout %s up %d down %d", h.Endpoint.Value, h.Period.AsDuration(), h.Timeout.AsDuration(), h.UpThreshold, h.DownThreshold)
}

func watchCmd(g *globals) *cobra.Command {
	var from int64
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Stream the state and every change to it, one JSON event per line",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.clientFor(0, func(ctx context.Context, c types.MerlinClient) error {
				stream, err := c.Watch(cmd.Context(), &types.WatchRequest{FromRevision: from})
				if err != nil {
					return err
				}
				for {
					ev, err := stream.Recv()
					if err != nil {
						if err == io.EOF {
							return nil
						}
						return err
					}
					b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(ev)
					if err != nil {
						return err
					}
					fmt.Fprintln(g.out, string(b))
				}
			})
		},
	}
	cmd.Flags().Int64Var(&from, "from-revision", 0, "resume from this revision instead of starting with the current state")
	return cmd
}

package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

func statusCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every node: the revision it applied, whether it lags, and why",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				resp, err := c.Status(ctx, emptyRequest)
				if err != nil {
					return err
				}
				sort.Slice(resp.Nodes, func(i, j int) bool { return resp.Nodes[i].Node < resp.Nodes[j].Node })
				if output != "table" {
					return printMessage(g.out, output, resp)
				}
				printStatus(g.out, resp, time.Now())
				return nil
			})
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}

func printStatus(w io.Writer, resp *types.StatusResponse, now time.Time) {
	fmt.Fprintf(w, "desired revision %d\n", resp.DesiredRevision)
	defer printFindings(w, resp)
	defer func() {
		for _, d := range resp.GetServerDrains() {
			fmt.Fprintln(w, "server drain: "+drainLine(d, now))
		}
	}()
	if len(resp.Nodes) == 0 {
		fmt.Fprintln(w, "no node reports status (are the merlin nodes reconciling?)")
		return
	}
	fmt.Fprintf(w, "%-16s %-24s %-8s %-8s %-14s %-6s %-6s %-6s %s\n", "NODE", "API", "APPLIED", "STATE", "LAST RECONCILE", "OWNED", "ERRORS", "VIPS", "VERSION")
	var notes []string
	for _, n := range resp.Nodes {
		state := "in step"
		switch {
		case n.LastResult != "ok":
			state = "failing"
			notes = append(notes, fmt.Sprintf("%s: last reconcile: %s", n.Node, n.LastResult))
		case n.AppliedRevision < resp.DesiredRevision:
			state = "lagging"
		}
		if len(n.Errors) > 0 && state == "in step" {
			state = "partial"
		}
		if gd := n.DeletionGuard; gd.GetHeld() {
			state = "held"
			notes = append(notes, fmt.Sprintf("%s: deletion guard holds back deleting %d of %d services; if intended: meradm confirm-deletions %d",
				n.Node, gd.Deletions, gd.Owned, gd.Revision))
		}
		for _, sk := range n.Sinks {
			if !sk.Ok {
				if state == "in step" {
					state = "partial"
				}
				notes = append(notes, fmt.Sprintf("%s: %s failing: %s (next retry in %s)", n.Node, sk.Name, sk.Error, sk.NextRetry.AsTime().Sub(now).Round(time.Second)))
			}
		}
		notes = append(notes, drainNotes(n, now)...)
		for _, v := range n.VipsNotServing {
			what := "not served"
			if v.State == "draining" {
				what = "draining"
			}
			line := fmt.Sprintf("%s: VIP %s %s (%s): %s", n.Node, v.Address, what, strings.ReplaceAll(v.State, "_", " "), v.Reason)
			if len(n.BgpPeers) > 0 {
				line += map[bool]string{true: "; announced", false: "; withdrawn"}[v.Announced]
			}
			notes = append(notes, line)
		}
		notes = append(notes, peerNotes(n, now)...)
		notes = append(notes, counterNotes(n)...)
		notes = append(notes, syncNotes(n)...)
		for _, w := range n.Warnings {
			notes = append(notes, fmt.Sprintf("%s: warning: %s", n.Node, w))
		}
		for _, id := range n.ServicesDown {
			notes = append(notes, fmt.Sprintf("%s: service %s: every server is down", n.Node, id))
		}
		for _, b := range n.ServicesBelow {
			notes = append(notes, fmt.Sprintf("%s: service %s below its healthy threshold (%d of %d servers up, needs %d) for %s: %s",
				n.Node, b.ServiceId, b.Healthy, b.Total, b.Need, now.Sub(b.Since.AsTime()).Round(time.Second), strings.ReplaceAll(b.Action, "_", " ")))
		}
		for _, h := range n.Servers {
			state := "up"
			if !h.Up {
				state = "down"
			}
			line := fmt.Sprintf("%s: server %s/%s %s, weight %d", n.Node, h.ServiceId, h.Server, state, h.EffectiveWeight)
			if h.Since != nil {
				line += fmt.Sprintf(", since %s ago", now.Sub(h.Since.AsTime()).Round(time.Second))
			}
			if h.LastError != "" {
				line += ": " + h.LastError
			}
			notes = append(notes, line)
		}
		notes = append(notes, omittedNotes(n)...)
		for _, e := range n.Errors {
			obj := "service " + e.ServiceId
			if e.Server != "" {
				obj = "server " + e.ServiceId + "/" + e.Server
			}
			notes = append(notes, fmt.Sprintf("%s: %s: %s (attempt %d, next retry in %s)", n.Node, obj, e.Error, e.Attempts,
				e.NextRetry.AsTime().Sub(now).Round(time.Second)))
		}
		ago := "-"
		if n.LastReconcile != nil {
			ago = now.Sub(n.LastReconcile.AsTime()).Round(time.Second).String() + " ago"
		}
		vips := fmt.Sprintf("%d/%d", n.VipsServing, int(n.VipsServing)+len(n.VipsNotServing))
		release, _, _ := strings.Cut(n.Version, " ") // the build details are in the note below when versions differ
		fmt.Fprintf(w, "%-16s %-24s %-8d %-8s %-14s %-6d %-6d %-6s %s\n", n.Node, n.ApiAddress, n.AppliedRevision, state, ago, n.OwnedServices, len(n.Errors), vips, release)
	}
	versions := map[string]bool{}
	for _, n := range resp.Nodes {
		versions[n.Version] = true
	}
	if len(versions) > 1 { // in the middle of an upgrade
		for _, n := range resp.Nodes {
			notes = append(notes, fmt.Sprintf("%s: runs merlin %s", n.Node, n.Version))
		}
	}
	for _, note := range notes {
		fmt.Fprintln(w, "  "+note)
	}
}

func drainNotes(n *types.NodeStatus, now time.Time) []string {
	d := n.Drain
	if d == nil {
		return nil
	}
	since := now.Sub(d.Since.AsTime()).Round(time.Second)
	if d.Withdrawn {
		return []string{fmt.Sprintf("%s: drained %s ago: its VIPs are withdrawn (meradm node undrain %s)", n.Node, since, n.Node)}
	}
	ramp := d.GetRamp().AsDuration()
	rampEnd := d.Since.AsTime().Add(ramp)
	if now.Before(rampEnd) {
		return []string{fmt.Sprintf("%s: draining for %s: link bandwidth ramping down, step %d of %d at %.0f %%; GRACEFUL_SHUTDOWN in %s, withdrawn in %s",
			n.Node, since, d.RampStep, d.RampSteps, 100*d.RampFraction, rampEnd.Sub(now).Round(time.Second), rampEnd.Add(d.WithdrawAfter.AsDuration()).Sub(now).Round(time.Second))}
	}
	left := rampEnd.Add(d.WithdrawAfter.AsDuration()).Sub(now).Round(time.Second)
	return []string{fmt.Sprintf("%s: draining for %s: VIPs announced with GRACEFUL_SHUTDOWN, withdrawn in %s", n.Node, since, max(left, 0))}
}

// bfdNote: ", bfd up (300ms, detects in 900ms), 2 flaps, last down 5m ago: control detection time expired".
func bfdNote(b *types.BFDSession, now time.Time) string {
	if b == nil {
		return ""
	}
	s := ", bfd " + b.State
	if b.DetectTime != nil {
		s += fmt.Sprintf(" (%s, detects in %s)", b.TxInterval.AsDuration(), b.DetectTime.AsDuration())
	}
	if b.State == "admin-down" {
		s += " (waits for the BGP session)"
	}
	if b.Flaps > 0 {
		s += fmt.Sprintf(", %d flaps", b.Flaps)
		if b.LastDown != nil {
			s += fmt.Sprintf(", last down %s ago: %s", now.Sub(b.LastDown.AsTime()).Round(time.Second), b.LastDownReason)
		}
	}
	return s
}

// lastErrorNote: the reason a session that is down went down; once it is
// back, the last error is history ("last session error 5m ago: …").
func lastErrorNote(p *types.BGPPeer, now time.Time) string {
	if p.LastError == "" {
		return ""
	}
	ago := ""
	if p.LastErrorAt != nil {
		ago = " " + now.Sub(p.LastErrorAt.AsTime()).Round(time.Second).String() + " ago"
	}
	if p.State == "established" {
		return fmt.Sprintf(" (last session error%s: %s)", ago, p.LastError)
	}
	if ago != "" {
		return fmt.Sprintf(": %s (%s)", p.LastError, strings.TrimSpace(ago))
	}
	return ": " + p.LastError
}

func peerNotes(n *types.NodeStatus, now time.Time) []string {
	var out []string
	for _, p := range n.BgpPeers {
		line := fmt.Sprintf("%s: bgp peer %s (AS %d) %s", n.Node, p.Address, p.As, p.State)
		if p.Source != "" {
			line = fmt.Sprintf("%s: bgp peer %s (AS %d, %s) %s", n.Node, p.Address, p.As, p.Source, p.State)
		}
		if p.UpSince != nil {
			line += fmt.Sprintf(" for %s", now.Sub(p.UpSince.AsTime()).Round(time.Second))
		}
		line += fmt.Sprintf(", %d prefixes sent, %d received", p.PrefixesSent, p.PrefixesReceived)
		if p.Shut {
			line += ", shut down"
		}
		line += bfdNote(p.Bfd, now)
		line += lastErrorNote(p, now)
		out = append(out, line)
		if p.Warning != "" {
			out = append(out, fmt.Sprintf("%s: bgp peer %s: warning: %s", n.Node, p.Address, p.Warning))
		}
	}
	if len(n.BgpPeers) > 0 {
		out = append(out, fmt.Sprintf("%s: bgp announces %d VIPs", n.Node, n.VipsAnnounced))
	}
	if n.BgpConfigError != "" {
		out = append(out, fmt.Sprintf("%s: bgp configuration not applied (the last good one runs): %s", n.Node, n.BgpConfigError))
	}
	return out
}

func nodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "node [drain|undrain]", Short: "Drain a node's BGP announcements (RFC 8326) or bring them back", Args: cobra.NoArgs, RunE: groupHelp}
	var after, ramp time.Duration
	drain := &cobra.Command{
		Use:   "drain NODE",
		Short: "Announce the node's VIPs with GRACEFUL_SHUTDOWN and lowest preference, then withdraw them",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				_, err := c.DrainNode(ctx, &types.DrainNodeRequest{Node: args[0], WithdrawAfter: durationpb.New(after), Ramp: durationpb.New(ramp)})
				if err == nil {
					fmt.Fprintf(g.out, "draining %s: VIPs withdrawn in %s (meradm status shows it)\n", args[0], ramp+after)
				}
				return err
			})
		},
	}
	drain.Flags().DurationVar(&after, "withdraw-after", 30*time.Second, "how long the VIPs stay announced with GRACEFUL_SHUTDOWN before they are withdrawn")
	drain.Flags().DurationVar(&ramp, "ramp", 0, "first lower the node's announced link bandwidth in steps over this long (weighted ECMP routers move its traffic gradually); 0: none")
	undrain := &cobra.Command{
		Use:   "undrain NODE",
		Short: "End a drain: the node announces its VIPs normally again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				_, err := c.DrainNode(ctx, &types.DrainNodeRequest{Node: args[0], Undrain: true})
				return err
			})
		},
	}
	cmd.AddCommand(drain, undrain)
	return cmd
}

func confirmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "confirm-deletions REVISION",
		Short: "Let nodes apply a desired state that deletes many services at once (see status)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rev, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("invalid revision %q", args[0])
			}
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				_, err := c.ConfirmDeletions(ctx, &types.ConfirmDeletionsRequest{Revision: rev})
				return err
			})
		},
	}
}

// nodeStats gathers the kernel counters of every node that reports status
// (or of the node meradm talks to, when none does).
func nodeStats(ctx context.Context, g *globals, c types.MerlinClient) ([]*types.StatsResponse, error) {
	st, err := c.Status(ctx, emptyRequest)
	if err != nil {
		return nil, err
	}
	if len(st.Nodes) == 0 {
		s, err := c.Stats(ctx, emptyRequest)
		if err != nil {
			return nil, err
		}
		return []*types.StatsResponse{s}, nil
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Node < st.Nodes[j].Node })
	var out []*types.StatsResponse
	for _, n := range st.Nodes {
		host, port, err := net.SplitHostPort(n.ApiAddress)
		p, perr := strconv.ParseUint(port, 10, 16)
		if err != nil || perr != nil {
			return nil, fmt.Errorf("node %s reports API address %q", n.Node, n.ApiAddress)
		}
		ng := *g
		ng.host, ng.port = host, uint16(p)
		if ng.tlsServerName == "" && (g.useTLS || g.tlsCA != "") {
			ng.tlsServerName = g.host
		}
		err = ng.client(func(ctx context.Context, nc types.MerlinClient) error {
			s, err := nc.Stats(ctx, emptyRequest)
			if err == nil {
				out = append(out, s)
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("stats of node %s (%s): %s", n.Node, n.ApiAddress, errorLine(err))
		}
	}
	return out, nil
}

func printStats(w io.Writer, nodes []*types.StatsResponse, rate bool) {
	for _, n := range nodes {
		fmt.Fprintf(w, "node %s\n", n.Node)
		if rate {
			fmt.Fprintf(w, "%-44s %10s %10s %10s %12s %12s\n", "Prot LocalAddress:Port [ID]", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")
			fmt.Fprintln(w, "  -> RemoteAddress:Port")
		} else {
			fmt.Fprintf(w, "%-44s %10s %10s %10s %12s %12s\n", "Prot LocalAddress:Port [ID]", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
			fmt.Fprintf(w, "  -> %-40s %10s %10s %10s %12s %12s %7s %7s\n", "RemoteAddress:Port", "", "", "", "", "", "ActConn", "InActConn")
		}
		line := func(name string, c *types.Counters) string {
			if rate {
				return fmt.Sprintf("%-44s %10d %10d %10d %12d %12d", name, c.GetCps(), c.GetInPps(), c.GetOutPps(), c.GetInBps(), c.GetOutBps())
			}
			return fmt.Sprintf("%-44s %10d %10d %10d %12d %12d", name, c.GetConnections(), c.GetInPackets(), c.GetOutPackets(), c.GetInBytes(), c.GetOutBytes())
		}
		for _, s := range n.Services {
			fmt.Fprintln(w, line(serviceName(s.Key)+" ["+s.ServiceId+"]", s.Counters))
			for _, d := range s.Servers {
				l := line("  -> "+model.ServerKeyString(d.Key), d.Counters)
				if !rate {
					l += fmt.Sprintf(" %7d %7d", d.ActiveConnections, d.InactiveConnections)
				}
				fmt.Fprintln(w, l)
			}
		}
	}
}

func serviceName(k *types.VirtualService_Key) string {
	return strings.TrimSpace(serviceLine(&types.VirtualService{Key: k, Config: &types.VirtualService_Config{}}))
}

// counterNotes say where the eBPF counters count, or why they do not.
func counterNotes(n *types.NodeStatus) []string {
	c := n.Counters
	switch {
	case c == nil:
		return nil
	case !c.On:
		return []string{fmt.Sprintf("%s: traffic counters off: %s", n.Node, c.Reason)}
	}
	line := fmt.Sprintf("%s: traffic counters on (%s), %d keys", n.Node, strings.Join(c.Attached, ", "), c.Keys)
	if c.KeysDropped > 0 {
		line += fmt.Sprintf(", %d did not fit", c.KeysDropped)
	}
	if c.UnresolvedServers > 0 {
		line += fmt.Sprintf(", %d direct-routing servers without a known MAC", c.UnresolvedServers)
	}
	out := []string{line}
	for _, p := range c.PassiveFailing {
		out = append(out, fmt.Sprintf("%s: passive health: %s/%s answered %d of %d connection attempts in %s (%d refused)",
			n.Node, p.ServiceId, p.Server, p.Answered, p.Attempts, p.Window.AsDuration(), p.Refused))
	}
	return out
}

// syncNotes: the connection sync daemons, when sync is on.
func syncNotes(n *types.NodeStatus) []string {
	cs := n.ConnSync
	if cs == nil || len(cs.Daemons) == 0 {
		return nil
	}
	var parts []string
	for _, d := range cs.Daemons {
		state := "running"
		if !d.Running {
			state = "NOT running"
		}
		parts = append(parts, fmt.Sprintf("%s %s", d.Role, state))
	}
	line := fmt.Sprintf("%s: connection sync on %s (sync id %d): %s", n.Node, cs.Daemons[0].GetInterface(), cs.Daemons[0].GetSyncId(), strings.Join(parts, ", "))
	if cs.Restored > 0 {
		line += fmt.Sprintf("; put back %d times", cs.Restored)
	}
	if cs.Error != "" {
		line += "; " + cs.Error
	}
	return []string{line}
}

// omittedNotes says what the node's status left out of its lists (each is
// bounded so that a status fits one etcd value), and how many servers the
// node checks when it does not list them all.
func omittedNotes(n *types.NodeStatus) []string {
	var notes []string
	if int(n.ServersChecked) > len(n.Servers) {
		notes = append(notes, fmt.Sprintf("%s: %d servers health-checked, %d up, %d down", n.Node, n.ServersChecked, n.ServersUp, n.ServersChecked-n.ServersUp))
	}
	for _, name := range slices.Sorted(maps.Keys(n.Omitted)) {
		notes = append(notes, fmt.Sprintf("%s: %d more %s not listed (a node's status is bounded; its /metrics has each)", n.Node, n.Omitted[name], strings.ReplaceAll(name, "_", " ")))
	}
	return notes
}

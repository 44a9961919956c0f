package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/merlin-ipvs/merlin/types"
)

// serverDrainCmd: meradm server drain SERVICE-ID IP:PORT.
func serverDrainCmd(g *globals) *cobra.Command {
	var deadline, poll time.Duration
	var then string
	var wait, cancel bool
	cmd := &cobra.Command{
		Use:               "drain SERVICE-ID IP:PORT",
		ValidArgsFunction: g.completeFromAPI(true),
		Short:             "Drain a real server: weight 0 on every node until its connections end (or a deadline), then delete it if asked",
		Example: `  meradm server drain web 198.19.0.2:8080 --deadline 10m --then delete --wait
  meradm server drain web 198.19.0.2:8080 --cancel   # the weight it had comes back`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := serverKey(args[1])
			if err != nil {
				return err
			}
			if then != "" && then != "delete" && then != "keep" {
				return fmt.Errorf("--then %q: want delete or keep", shorten(then))
			}
			req := &types.DrainServerRequest{ServiceId: args[0], Server: key, ThenDelete: then == "delete", Cancel: cancel}
			if cmd.Flags().Changed("deadline") {
				req.Deadline = durationpb.New(deadline)
			}
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				if _, err := c.DrainServer(ctx, req); err != nil {
					return err
				}
				if cancel || !wait {
					return nil
				}
				return waitDrain(ctx, g.out, c, args[0], serverKeyText(key), poll)
			})
		},
	}
	f := cmd.Flags()
	f.DurationVar(&deadline, "deadline", 0, "complete after this long even with connections left (0: wait for them)")
	f.StringVar(&then, "then", "keep", "what follows the drain: keep (the server stays at weight 0) or delete")
	f.BoolVar(&wait, "wait", false, "follow the drain until it completes, printing each node's connections")
	f.DurationVar(&poll, "wait-interval", 2*time.Second, "how often --wait asks")
	f.BoolVar(&cancel, "cancel", false, "end the drain and restore the weight the server had")
	return cmd
}

func serverKeyText(k *types.RealServer_Key) string {
	if strings.Contains(k.Ip, ":") {
		return fmt.Sprintf("[%s]:%d", k.Ip, k.Port)
	}
	return fmt.Sprintf("%s:%d", k.Ip, k.Port)
}

// waitDrain prints the drain's progress until it is over.
func waitDrain(ctx context.Context, w io.Writer, c types.MerlinClient, serviceID, server string, poll time.Duration) error {
	for {
		resp, err := c.Status(ctx, emptyRequest)
		if err != nil {
			return err
		}
		d := findDrain(resp, serviceID, server)
		if d == nil {
			fmt.Fprintf(w, "%s %s: drain over, server deleted\n", serviceID, server)
			return nil
		}
		fmt.Fprintln(w, drainLine(d, time.Now()))
		if d.State != "draining" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

func findDrain(resp *types.StatusResponse, serviceID, server string) *types.ServerDrainStatus {
	for _, d := range resp.GetServerDrains() {
		if d.ServiceId == serviceID && d.Server == server {
			return d
		}
	}
	return nil
}

// drainLine: "web 198.19.0.2:8080: draining for 1m0s, deadline in 9m0s, then delete: lb1 3 active 1 inactive, lb2 0, lb3 no report yet".
func drainLine(d *types.ServerDrainStatus, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: ", d.ServiceId, d.Server)
	switch d.State {
	case "draining":
		fmt.Fprintf(&b, "draining for %s", now.Sub(d.Since.AsTime()).Round(time.Second))
	case "complete":
		fmt.Fprintf(&b, "drained (every node reported no connection) after %s", d.CompletedAt.AsTime().Sub(d.Since.AsTime()).Round(time.Second))
	default:
		fmt.Fprintf(&b, "drain ended by its deadline after %s", d.CompletedAt.AsTime().Sub(d.Since.AsTime()).Round(time.Second))
	}
	if d.Deadline != nil && d.State == "draining" {
		fmt.Fprintf(&b, ", deadline in %s", max(d.Deadline.AsTime().Sub(now), 0).Round(time.Second))
	}
	if d.ThenDelete {
		b.WriteString(", then delete")
	}
	if d.State != "draining" {
		fmt.Fprintf(&b, " (weight 0; was %d)", d.PreviousWeight)
		return b.String()
	}
	b.WriteString(":")
	for i, n := range d.Nodes {
		sep := ","
		if i == 0 {
			sep = ""
		}
		switch {
		case n.Error != "":
			fmt.Fprintf(&b, "%s %s cannot count: %s", sep, n.Node, n.Error)
		case !n.Reported:
			fmt.Fprintf(&b, "%s %s no report yet", sep, n.Node)
		case n.Active+n.Inactive == 0:
			fmt.Fprintf(&b, "%s %s 0", sep, n.Node)
		default:
			fmt.Fprintf(&b, "%s %s %d active %d inactive", sep, n.Node, n.Active, n.Inactive)
		}
	}
	return b.String()
}

package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/bgp/bfd"
)

// runSpeaker is one node: a TCP listener on the VIP (every connection is
// accepted and closed) and merlin's speaker announcing the VIP, with BFD
// if asked. It runs inside the node's namespace until SIGTERM.
func runSpeaker(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("speaker", flag.ContinueOnError)
	addr := fs.String("addr", "", "this node's address")
	hold := fs.Duration("hold", 9*time.Second, "BGP hold time")
	bfdEvery := fs.Duration("bfd", 0, "BFD interval (0: no BFD)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", vip+":80")
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer ln.Close()
	local := netip.MustParseAddr(*addr)
	peer := bgp.Peer{Address: netip.MustParseAddr(routerAddr), AS: routerAS, Local: local, HoldTime: *hold, ConnectRetry: time.Second}
	if *bfdEvery > 0 {
		peer.BFD = &bfd.Config{MinTx: *bfdEvery, MinRx: *bfdEvery, Multiplier: 3}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := bgp.New(bgp.Config{LocalAS: nodeAS, RouterID: local, Peers: []bgp.Peer{peer}}, log)
	if err != nil {
		return err
	}
	if err := s.Set(ctx, []bgp.Route{bgp.HostRoute(netip.MustParseAddr(vip))}); err != nil {
		return err
	}
	if err := s.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

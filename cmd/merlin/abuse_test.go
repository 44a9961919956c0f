package main

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/merlin-ipvs/merlin/types"
)

// More client connections than -max-connections: the extra ones are closed
// and counted, merlin and its embedded etcd keep running, and once the
// idle ones time out a client is served again.
func TestConnectionCapAndIdleTimeout(t *testing.T) {
	api, health := freePort(t), freePort(t)
	cmd, out := startAPIOnly(t, "-port", api, "-health-port", health, "-max-connections", "8", "-idle-timeout", "2s")
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("merlin after SIGTERM: %v\n%s", err, out.String())
		}
	})
	waitFor(t, "ready", func() bool { return metricOf(t, health, "") >= 0 })

	conn, err := grpc.NewClient("127.0.0.1:"+api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	list := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := types.NewMerlinClient(conn).List(ctx, &emptypb.Empty{})
		return err
	}
	if err := list(); err != nil {
		t.Fatal(err)
	}
	// 40 raw connections that never speak: 7 fit beside the client's.
	var raw []net.Conn
	for range 40 {
		c, err := net.Dial("tcp", "127.0.0.1:"+api)
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw, c)
	}
	defer func() {
		for _, c := range raw {
			c.Close()
		}
	}()
	waitFor(t, "33 connections refused", func() bool { return metricOf(t, health, "merlin_api_connections_refused_total") >= 33 })
	if err := list(); err != nil {
		t.Fatalf("the client that was already connected: %v", err)
	}
	// Connections that never finish the handshake are closed (10 s), idle
	// ones after the idle timeout: the open count falls back.
	waitFor(t, "the silent connections closed", func() bool { return metricOf(t, health, "merlin_api_connections") <= 1 })
	if err := list(); err != nil {
		t.Fatalf("after the flood: %v", err)
	}
}

// metricOf reads one metric from merlin's /metrics (-1 when it cannot).
func metricOf(t *testing.T, port, name string) float64 {
	resp, err := http.Get("http://127.0.0.1:" + port + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	if name == "" {
		return 0
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

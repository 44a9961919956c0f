package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/internal/testenv"
	"github.com/merlin-ipvs/merlin/internal/testpki"
	"github.com/merlin-ipvs/merlin/internal/tlsconfig"
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
	testenv.Eventually(t, "ready", func() bool { return metricOf(t, health, "") >= 0 })

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
	testenv.Eventually(t, "33 connections refused", func() bool { return metricOf(t, health, "merlin_api_connections_refused_total") >= 33 })
	if err := list(); err != nil {
		t.Fatalf("the client that was already connected: %v", err)
	}
	// Connections that never finish the handshake are closed (10 s), idle
	// ones after the idle timeout: the open count falls back.
	testenv.Eventually(t, "the silent connections closed", func() bool { return metricOf(t, health, "merlin_api_connections") <= 1 })
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

// rssOf is a process's resident set and its peak so far, in MiB.
func rssOf(t *testing.T, pid int) (rss, peak float64) {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
			kb, _ := strconv.ParseFloat(f[1], 64)
			if f[0] == "VmRSS:" {
				rss = kb / 1024
			} else {
				peak = kb / 1024
			}
		}
	}
	return rss, peak
}

func stopMerlin(t *testing.T, cmd *exec.Cmd, out *testenv.Buffer) {
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("merlin after SIGTERM: %v\n%s", err, out.String())
		}
	})
}

func dialAPI(t *testing.T, port string, opts ...grpc.DialOption) types.MerlinClient {
	t.Helper()
	conn, err := grpc.NewClient("127.0.0.1:"+port, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return types.NewMerlinClient(conn)
}

// Under an open-files limit of 300 (the issue's), 400 silent connections
// neither starve the embedded etcd nor end merlin: the cap is lowered to
// leave merlin its descriptors, and a client connected before is served,
// writes included.
func TestConnectionFloodUnderALowFileLimit(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	api, health := freePort(t), freePort(t)
	cmd, out := startAPIOnlyUnder(t, []string{"prlimit", "--nofile=300:300", "--"}, "-port", api, "-health-port", health)
	stopMerlin(t, cmd, out)
	testenv.Eventually(t, "ready", func() bool { return metricOf(t, health, "") >= 0 })
	client := dialAPI(t, api)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := client.List(ctx, &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	var raw []net.Conn
	defer func() {
		for _, c := range raw {
			c.Close()
		}
	}()
	for range 400 {
		c, err := net.Dial("tcp", "127.0.0.1:"+api)
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw, c)
	}
	testenv.Eventually(t, "250 connections refused", func() bool { return metricOf(t, health, "merlin_api_connections_refused_total") >= 250 })
	if _, err := client.CreateService(ctx, &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.10", Port: 80, Protocol: types.Protocol_TCP}, Config: &types.VirtualService_Config{Scheduler: "wrr"}}); err != nil {
		t.Fatalf("a write through etcd during the flood: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "-max-connections lowered") {
		t.Errorf("no warning that the cap was lowered:\n%s", out.String())
	}
	rss, peak := rssOf(t, cmd.Process.Pid)
	t.Logf("RSS with 400 silent connections under a 300-descriptor limit: %.0f MiB (peak %.0f MiB)", rss, peak)
}

// Ten Watch clients that never read, 2,000 writes of services near the
// size limits, and 300 updates each carrying a 1.4 MB field: the watchers
// are cut off with ResourceExhausted, the big updates are InvalidArgument,
// and merlin's memory stays bounded.
func TestAbuseKeepsMemoryBounded(t *testing.T) {
	api, health := freePort(t), freePort(t)
	cmd, out := startAPIOnly(t, "-port", api, "-health-port", health, "-watch-snapshot-stall", "1s")
	stopMerlin(t, cmd, out)
	testenv.Eventually(t, "ready", func() bool { return metricOf(t, health, "") >= 0 })
	client := dialAPI(t, api)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := client.List(ctx, &emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	base, _ := rssOf(t, cmd.Process.Pid)

	var watchers []grpc.ServerStreamingClient[types.WatchEvent]
	for range 10 {
		w := dialAPI(t, api, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		stream, err := w.Watch(ctx, &types.WatchRequest{})
		if err != nil {
			t.Fatal(err)
		}
		watchers = append(watchers, stream)
	}
	big := strings.Repeat("x", 1000)
	for i := range 2000 {
		svc := &types.VirtualService{Id: fmt.Sprintf("svc-%04d", i),
			Key:    &types.VirtualService_Key{Ip: fmt.Sprintf("198.18.%d.%d", i/250, i%250+1), Port: 80, Protocol: types.Protocol_TCP},
			Config: &types.VirtualService_Config{Scheduler: "wrr"},
			Defaults: &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{
				Endpoint: wrapperspb.String("udp://:53"), UdpSend: big, UdpExpect: big, ExpectBody: big, Command: big}}}
		if _, err := client.CreateService(ctx, svc); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	_, afterWrites := rssOf(t, cmd.Process.Pid)
	for i, w := range watchers {
		var err error
		for err == nil {
			_, err = w.Recv()
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("watcher %d ended with %v, want ResourceExhausted", i, err)
		}
	}
	// Ten more that never read, of the whole 8 MB table: each snapshot is
	// cut off once nothing of it was read for the stall, at most four
	// built at once.
	for i := range 10 {
		w := dialAPI(t, api, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		stream, err := w.Watch(ctx, &types.WatchRequest{})
		if err != nil {
			t.Fatal(err)
		}
		watchers[i] = stream
	}
	testenv.Eventually(t, "every snapshot watcher cut off", func() bool {
		return strings.Count(out.String(), "read nothing of its snapshot") == 10
	})
	for i, w := range watchers {
		var err error
		for err == nil {
			_, err = w.Recv()
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("snapshot watcher %d ended with %v, want ResourceExhausted", i, err)
		}
	}
	_, afterSnapshots := rssOf(t, cmd.Process.Pid)
	huge := strings.Repeat("y", 1400<<10)
	for i := range 300 {
		_, err := client.UpdateService(ctx, &types.VirtualService{Id: "svc-0000", Defaults: &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{UdpSend: huge}}})
		if status.Code(err) != codes.InvalidArgument || len(status.Convert(err).Message()) > 200 {
			t.Fatalf("oversized update %d: %v", i, status.Code(err))
		}
	}
	rss, peak := rssOf(t, cmd.Process.Pid)
	t.Logf("RSS: %.0f MiB at start; peak %.0f MiB after 10 non-reading watchers and 2,000 writes of ~4 KB; peak %.0f MiB after 10 non-reading watchers of the 8 MB snapshot; %.0f MiB (peak %.0f MiB) after 300 updates of 1.4 MB refused",
		base, afterWrites, afterSnapshots, rss, peak)
	if peak > 512 {
		t.Fatalf("peak RSS %.0f MiB", peak)
	}
}

// One host holding raw TCP connections to the API (no TLS, no HTTP/2
// preface; reconnecting whatever is closed) takes only its per-source
// share: a client with a valid certificate from elsewhere still gets in.
// (Without the per-source cap the attacker took all of -max-connections.)
func TestOneSourceCannotLockTheAPIOut(t *testing.T) {
	ca := testpki.NewCA(t, "merlin")
	srv, client := ca.Server(t, "merlin-server"), ca.Client(t, "ops")
	api, health := freePort(t), freePort(t)
	cmd, out := startAPIOnly(t, "-port", api, "-health-port", health, "-tls-cert", srv.CertFile, "-tls-key", srv.KeyFile, "-tls-client-ca", ca.CertFile,
		"-max-connections", "100", "-max-connections-per-source", "32")
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("merlin:\n%s", out.String())
		}
	})
	testenv.Eventually(t, "ready", func() bool { return metricOf(t, health, "") >= 0 })
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var held atomic.Int64
	var attackers sync.WaitGroup
	for range 200 {
		attackers.Go(func() { holdRaw(ctx, "127.0.0.2", "127.0.0.1:"+api, &held) })
	}
	defer attackers.Wait()
	defer stop()
	testenv.Eventually(t, "the attacker refused past its share", func() bool {
		return metricOf(t, health, "merlin_api_connections_refused_total") >= 100
	})
	tc, err := tlsconfig.Client(ca.CertFile, client.CertFile, client.KeyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("127.0.0.1:"+api, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := types.NewMerlinClient(conn).List(cctx, &emptypb.Empty{}); err != nil {
		t.Fatalf("the certified client under attack: %v", err)
	}
	if open := metricOf(t, health, "merlin_api_connections"); open > 33 {
		t.Errorf("%v connections open: the attacker holds more than its 32", open)
	}
	rss, peak := rssOf(t, cmd.Process.Pid)
	t.Logf("under 200 reconnecting raw connections from one source: %.0f MiB resident, peak %.0f MiB", rss, peak)
}

// holdRaw keeps one silent TCP connection from src open, reconnecting
// whenever it is closed, until ctx ends.
func holdRaw(ctx context.Context, src, dst string, held *atomic.Int64) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	for ctx.Err() == nil {
		c, err := d.DialContext(ctx, "tcp", dst)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		held.Add(1)
		go func() {
			<-ctx.Done()
			c.Close()
		}()
		_, _ = c.Read(make([]byte, 1)) // until the server closes it
		c.Close()
		held.Add(-1)
	}
}

package grpcprobe

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/merlin-ipvs/merlin/health"
)

func TestGRPCHealth(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	p := health.NewProber()
	p.Handle(health.GRPC, Prober{})
	check := health.Check{Kind: health.GRPC, Target: netip.MustParseAddrPort(ln.Addr().String()), Probe: health.ProbeOf(health.ProbeSpec{GRPCService: "api"}), Timeout: 2 * time.Second}

	hs.SetServingStatus("api", healthpb.HealthCheckResponse_SERVING)
	if err := p.Probe(context.Background(), check); err != nil {
		t.Fatal(err)
	}
	hs.SetServingStatus("api", healthpb.HealthCheckResponse_NOT_SERVING)
	if err := p.Probe(context.Background(), check); health.Reason(err) != health.ReasonStatus {
		t.Fatalf("not serving: %v (reason %s), want reason %s", err, health.Reason(err), health.ReasonStatus)
	}
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := netip.MustParseAddrPort(ln2.Addr().String())
	ln2.Close()
	check.Target = closed
	if err := p.Probe(context.Background(), check); err == nil {
		t.Fatal("a closed port answered")
	}
}

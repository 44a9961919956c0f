// Package grpcprobe is the gRPC health check (grpc.health.v1) for the
// health monitor: health.Monitor.Handle(health.GRPC, grpcprobe.Prober{}).
// It lives apart so that the health core needs only the standard library.
// No privileges needed.
package grpcprobe

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/merlin-ipvs/merlin/health"
)

// Prober asks a server's grpc.health.v1 service about c.GRPCService, over
// TLS when the check verifies or names a TLS server.
type Prober struct{}

// Probe runs one check within the deadline of ctx; nil means serving.
func (Prober) Probe(ctx context.Context, c health.Check) error {
	creds := insecure.NewCredentials()
	if c.Spec().TLSVerify || c.Spec().TLSName != "" {
		creds = credentials.NewTLS(&tls.Config{ServerName: c.Spec().TLSName, InsecureSkipVerify: !c.Spec().TLSVerify, MinVersion: tls.VersionTLS12}) //nolint:gosec // the check's choice
	}
	d, err := health.PathDialer(c, "tcp")
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(c.Target.String(), grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: c.Spec().GRPCService})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &health.ProbeError{Reason: health.ReasonRefused, Err: fmt.Errorf("grpc health: %w", err)}
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return &health.ProbeError{Reason: health.ReasonStatus, Err: fmt.Errorf("grpc health status %s", s)}
	}
	return nil
}

package api_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/types"
)

// TestAPIHealthyThreshold: a threshold out of range, a sorry server that
// is also a member (either way round), sorry servers without the SORRY
// action: each a clear error naming the field, nothing written.
func TestAPIHealthyThreshold(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx, c := ctxT(t), env.client
	svc := tcpService("web", "198.18.0.1", 80)
	noErr(t)(c.CreateService(ctx, svc))
	noErr(t)(c.CreateServer(ctx, server("web", "198.19.0.2", 8080, 1)))
	member := &types.RealServer_Key{Ip: "198.19.0.2", Port: 8080}
	sorry := &types.RealServer_Key{Ip: "198.19.0.9", Port: 8080}
	th := func(f func(*types.HealthyThreshold)) *types.VirtualService {
		h := &types.HealthyThreshold{MinPercent: wrapperspb.UInt32(50), Action: types.BelowThresholdAction_SORRY, SorryServers: []*types.RealServer_Key{sorry}}
		f(h)
		return &types.VirtualService{Id: "web", HealthyThreshold: h}
	}
	for _, bad := range []struct {
		update *types.VirtualService
		field  string
	}{
		{th(func(h *types.HealthyThreshold) { h.MinPercent = wrapperspb.UInt32(101) }), "healthy_threshold.min_percent"},
		{th(func(h *types.HealthyThreshold) { h.MinPercent = nil }), "healthy_threshold"},
		{th(func(h *types.HealthyThreshold) { h.HoldDown = durationpb.New(2 * time.Hour) }), "healthy_threshold.hold_down"},
		{th(func(h *types.HealthyThreshold) { h.SorryServers = nil }), "healthy_threshold.sorry_servers"},
		{th(func(h *types.HealthyThreshold) { h.Action = types.BelowThresholdAction_WITHDRAW }), "healthy_threshold.sorry_servers"},
		{th(func(h *types.HealthyThreshold) { h.SorryServers = []*types.RealServer_Key{{Ip: "host", Port: 1}} }), "healthy_threshold.sorry_servers[0].ip"},
		{th(func(h *types.HealthyThreshold) { h.SorryServers = []*types.RealServer_Key{member} }), "sorry server"},
	} {
		_, err := c.UpdateService(ctx, bad.update)
		if wantCode(t, err, codes.InvalidArgument); !strings.Contains(err.Error(), bad.field) {
			t.Errorf("%v: %v does not name %q", bad.update.HealthyThreshold, err, bad.field)
		}
	}
	if got, err := c.GetService(ctx, wrapperspb.String("web")); err != nil || got.Service.HealthyThreshold != nil {
		t.Fatalf("a refused threshold was stored: %v, %v", got, err)
	}
	noErr(t)(c.UpdateService(ctx, th(func(*types.HealthyThreshold) {})))
	_, err := c.CreateServer(ctx, server("web", "198.19.0.9", 8080, 1))
	if wantCode(t, err, codes.InvalidArgument); !strings.Contains(err.Error(), "sorry server") {
		t.Errorf("a member equal to the sorry server: %v", err)
	}
	// A merge carries passive health and the threshold together.
	noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "web", PassiveHealth: &types.PassiveHealth{Enabled: wrapperspb.Bool(true)}}))
	if got, err := c.GetService(ctx, wrapperspb.String("web")); err != nil || !got.Service.GetPassiveHealth().GetEnabled().GetValue() || got.Service.HealthyThreshold == nil {
		t.Fatalf("passive health after a merge: %v, %v", got.GetService(), err)
	}
	// An empty threshold removes it.
	noErr(t)(c.UpdateService(ctx, &types.VirtualService{Id: "web", HealthyThreshold: &types.HealthyThreshold{}}))
	if got, err := c.GetService(ctx, wrapperspb.String("web")); err != nil || got.Service.HealthyThreshold != nil {
		t.Fatalf("the threshold stayed: %v, %v", got.GetService().GetHealthyThreshold(), err)
	}
}

// TestAPIThroughVIPRefused: a check through the VIP on a NAT server, or on
// a firewall-mark service, is refused naming the field; nothing written.
func TestAPIThroughVIPRefused(t *testing.T) {
	env := startAPI(t, etcdtest.Embedded)
	ctx, c := ctxT(t), env.client
	noErr(t)(c.CreateService(ctx, tcpService("web", "198.18.0.1", 80)))
	through := &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("tcp://:80"), Period: durationpb.New(time.Second), Timeout: durationpb.New(time.Second),
		UpThreshold: 1, DownThreshold: 1, ThroughVip: wrapperspb.Bool(true)}
	nat := server("web", "198.19.0.2", 8080, 1)
	nat.Config.Forward, nat.HealthCheck = types.ForwardMethod_MASQ, through
	_, err := c.CreateServer(ctx, nat)
	if wantCode(t, err, codes.InvalidArgument); !strings.Contains(err.Error(), "health_check.through_vip") || !strings.Contains(err.Error(), "NAT") {
		t.Errorf("a NAT server checked through the VIP: %v", err)
	}
	dr := server("web", "198.19.0.2", 80, 1)
	dr.Config.Forward, dr.HealthCheck = types.ForwardMethod_ROUTE, through
	noErr(t)(c.CreateServer(ctx, dr))
	mark := &types.VirtualService{Id: "marked", Key: &types.VirtualService_Key{Fwmark: 7}, Config: &types.VirtualService_Config{Scheduler: "rr"},
		Defaults: &types.VirtualService_ServerDefaults{Forward: types.ForwardMethod_ROUTE, HealthCheck: through}}
	_, err = c.CreateService(ctx, mark)
	if wantCode(t, err, codes.InvalidArgument); !strings.Contains(err.Error(), "defaults.health_check.through_vip") {
		t.Errorf("a firewall-mark service checked through the VIP: %v", err)
	}
	if got, err := c.GetService(ctx, wrapperspb.String("web")); err != nil || len(got.Servers) != 1 {
		t.Fatalf("servers after the refusals: %v, %v", got, err)
	}
}

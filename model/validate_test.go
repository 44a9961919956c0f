package model

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/types"
)

func TestValidStatusSpec(t *testing.T) {
	for _, good := range []string{"200", "200,204", "200-299", "200, 300-304"} {
		if err := ValidStatusSpec(good); err != nil {
			t.Errorf("%q refused: %v", good, err)
		}
	}
	for _, bad := range []string{"abc", "99", "300-200", "200-", "600", ""} {
		if ValidStatusSpec(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestForwardNames(t *testing.T) {
	for name, want := range map[string]string{"dr": "route", "Gatewaying": "route", "ipip": "tunnel", "nat": "masq", "m": "masq", "masq": "masq"} {
		m, err := ParseForward(name)
		if err != nil || ForwardName(m) != want {
			t.Errorf("ParseForward(%q) = %v, %v; want %s", name, ForwardName(m), err, want)
		}
	}
	if _, err := ParseForward("bypass"); err == nil {
		t.Error("bypass accepted")
	}
}

func TestMergePresentReplacesLists(t *testing.T) {
	cur := &types.VirtualService_Config{Scheduler: "sh", Flags: []string{"sh-port", "flag-3"}, PersistenceEngine: "sip"}
	MergePresent(cur, &types.VirtualService_Config{Flags: []string{"flag-1"}})
	if strings.Join(cur.Flags, ",") != "flag-1" || cur.Scheduler != "sh" || cur.PersistenceEngine != "sip" {
		t.Fatalf("after merge: %v", cur)
	}
}

// A server turns off a check it inherits with an endpoint of "" of its own;
// other fields it sets lie over the default's, zero durations included.
func TestEffectiveHealthCheckOptOut(t *testing.T) {
	svc := &types.VirtualService{Defaults: &types.VirtualService_ServerDefaults{HealthCheck: &types.RealServer_HealthCheck{
		Endpoint: wrapperspb.String("tcp://:8080"), Period: durationpb.New(2 * time.Second), SlowStart: durationpb.New(time.Minute), UpThreshold: 2}}}
	off := &types.RealServer{HealthCheck: &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("")}}
	if h := EffectiveHealthCheck(off, svc); h.GetEndpoint().GetValue() != "" || h.GetPeriod().AsDuration() != 2*time.Second {
		t.Fatalf("opted out: %v", h)
	}
	noRamp := &types.RealServer{HealthCheck: &types.RealServer_HealthCheck{SlowStart: durationpb.New(0)}}
	if h := EffectiveHealthCheck(noRamp, svc); h.GetEndpoint().GetValue() != "tcp://:8080" || h.GetSlowStart().AsDuration() != 0 || h.GetUpThreshold() != 2 {
		t.Fatalf("own slow start 0: %v", h)
	}
	if h := EffectiveHealthCheck(&types.RealServer{}, svc); h.GetEndpoint().GetValue() != "tcp://:8080" {
		t.Fatalf("inherited: %v", h)
	}
}

func TestNormalizeAnnounce(t *testing.T) {
	base := func(a *types.Announce) *types.VirtualService {
		return &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.1", Port: 80, Protocol: types.Protocol_TCP},
			Config: &types.VirtualService_Config{Scheduler: "rr"}, Announce: a}
	}
	got, err := NormalizeService(base(&types.Announce{}))
	if err != nil || got.Announce != nil {
		t.Fatalf("empty announce: %v, %v (want it dropped)", got.GetAnnounce(), err)
	}
	if _, err := NormalizeService(base(&types.Announce{Communities: []string{"65535:0", "1:2"}, LargeCommunities: []string{"4200000000:1:2"}})); err != nil {
		t.Fatal(err)
	}
	many := make([]string, 33)
	for i := range many {
		many[i] = "1:1"
	}
	for _, tc := range []struct {
		a    *types.Announce
		want string
	}{
		{&types.Announce{Communities: []string{"65536:1"}}, "announce.communities: \"65536:1\""},
		{&types.Announce{Communities: []string{"1"}}, "announce.communities"},
		{&types.Announce{LargeCommunities: []string{"1:2"}}, "announce.large_communities"},
		{&types.Announce{LargeCommunities: []string{"4294967296:0:0"}}, "announce.large_communities"},
		{&types.Announce{Communities: many}, "33 items, at most 32"},
		{&types.Announce{Communities: []string{strings.Repeat("9", 100)}}, "…"},
	} {
		_, err := NormalizeService(base(tc.a))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.a, err, tc.want)
		}
	}
}

func TestNormalizePassiveHealth(t *testing.T) {
	base := func(p *types.PassiveHealth) *types.VirtualService {
		return &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.1", Port: 80, Protocol: types.Protocol_TCP},
			Config: &types.VirtualService_Config{Scheduler: "rr"}, PassiveHealth: p}
	}
	got, err := NormalizeService(base(&types.PassiveHealth{}))
	if err != nil || got.PassiveHealth != nil {
		t.Fatalf("empty passive health: %v, %v (want it dropped)", got.GetPassiveHealth(), err)
	}
	on := &types.PassiveHealth{Enabled: wrapperspb.Bool(true), MinAttempts: wrapperspb.UInt32(3)}
	if _, err := NormalizeService(base(on)); err != nil {
		t.Fatal(err)
	}
	if w, n, pct, ok := PassiveSettings(on); !ok || w != DefaultPassiveWindow || n != 3 || pct != DefaultPassiveMaxFailed {
		t.Fatalf("settings with defaults: %v %v %v %v", w, n, pct, ok)
	}
	if _, _, _, ok := PassiveSettings(&types.PassiveHealth{Enabled: wrapperspb.Bool(false), MinAttempts: wrapperspb.UInt32(3)}); ok {
		t.Fatal("disabled passive health is on")
	}
	for _, tc := range []struct {
		p    *types.PassiveHealth
		want string
	}{
		{&types.PassiveHealth{Window: durationpb.New(time.Second)}, "passive_health.window: 1s: want 2s to 5m"},
		{&types.PassiveHealth{Window: durationpb.New(time.Hour)}, "passive_health.window"},
		{&types.PassiveHealth{MinAttempts: wrapperspb.UInt32(0)}, "passive_health.min_attempts: 0"},
		{&types.PassiveHealth{MaxFailedPercent: wrapperspb.UInt32(100)}, "passive_health.max_failed_percent: 100: want 0 to 99"},
	} {
		_, err := NormalizeService(base(tc.p))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.p, err, tc.want)
		}
	}
}

// Every field is bounded, and an error never quotes more than a short
// prefix of the value at fault.
func TestLimits(t *testing.T) {
	svc := func() *types.VirtualService {
		return &types.VirtualService{Id: "web", Key: &types.VirtualService_Key{Ip: "198.18.0.1", Port: 80, Protocol: types.Protocol_TCP},
			Config: &types.VirtualService_Config{Scheduler: "rr"}}
	}
	check := func() *types.RealServer_HealthCheck {
		return &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("udp://:53"), Period: durationpb.New(time.Second),
			Timeout: durationpb.New(time.Second), UpThreshold: 1, DownThreshold: 1}
	}
	srv := func(edit func(*types.RealServer_HealthCheck)) *types.RealServer {
		h := check()
		edit(h)
		return &types.RealServer{ServiceID: "web", Key: &types.RealServer_Key{Ip: "198.19.0.1", Port: 53},
			Config: &types.RealServer_Config{Forward: types.ForwardMethod_ROUTE}, HealthCheck: h}
	}
	normal := func() *types.VirtualService {
		n, err := NormalizeService(svc())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	huge := strings.Repeat("x", 1<<20)
	for _, tc := range []struct {
		name string
		err  func() error
		want string
	}{
		{"udp payload", func() error {
			_, err := NormalizeServer(srv(func(h *types.RealServer_HealthCheck) { h.UdpSend = huge }), normal())
			return err
		}, "health_check.udp_send: 1048576 bytes, at most 1024"},
		{"endpoint", func() error {
			_, err := NormalizeServer(srv(func(h *types.RealServer_HealthCheck) { h.Endpoint = wrapperspb.String("http://:80/" + huge) }), normal())
			return err
		}, "health_check.endpoint: 1048587 bytes, at most 512"},
		{"control characters", func() error {
			_, err := NormalizeServer(srv(func(h *types.RealServer_HealthCheck) { h.GrpcService = "a\x00b" }), normal())
			return err
		}, "health_check.grpc_service"},
		{"1 ns period", func() error {
			_, err := NormalizeServer(srv(func(h *types.RealServer_HealthCheck) { h.Period = durationpb.New(time.Nanosecond) }), normal())
			return err
		}, "health_check.period: 1ns: want 100ms to 1h0m0s"},
		{"1 ns timeout", func() error {
			_, err := NormalizeServer(srv(func(h *types.RealServer_HealthCheck) { h.Timeout = durationpb.New(time.Nanosecond) }), normal())
			return err
		}, "health_check.timeout"},
		{"threshold", func() error {
			_, err := NormalizeServer(srv(func(h *types.RealServer_HealthCheck) { h.DownThreshold = 1000 }), normal())
			return err
		}, "at most 100"},
		{"scheduler", func() error { s := svc(); s.Config.Scheduler = huge; _, err := NormalizeService(s); return err }, "config.scheduler: 1048576 bytes, at most 256"},
		{"flags", func() error {
			s := svc()
			s.Config.Flags = make([]string, 40)
			_, err := NormalizeService(s)
			return err
		}, "config.flags: 40 items, at most 32"},
		{"loopback VIP", func() error { s := svc(); s.Key.Ip = "127.0.0.1"; _, err := NormalizeService(s); return err }, "key.ip: 127.0.0.1 cannot be a VIP"},
		{"broadcast VIP", func() error { s := svc(); s.Key.Ip = "255.255.255.255"; _, err := NormalizeService(s); return err }, "cannot be a VIP"},
		{"persistence", func() error {
			s := svc()
			s.Config.PersistenceTimeout = wrapperspb.UInt32(MaxPersistenceTimeout + 1)
			_, err := NormalizeService(s)
			return err
		}, "config.persistence_timeout: 2678401 s is above"},
		{"long quoted value", func() error {
			s := svc()
			s.Config.Scheduler = strings.Repeat("y", 200)
			_, err := NormalizeService(s)
			return err
		}, "yyyy…\""},
	} {
		err := tc.err()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
		if err != nil && len(err.Error()) > 300 {
			t.Errorf("%s: %d-byte error message", tc.name, len(err.Error()))
		}
	}
}

package main

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/internal/etcdtest"
	"github.com/merlin-ipvs/merlin/internal/testobj"
	"github.com/merlin-ipvs/merlin/types"
)

// TestUpgradeFromOriginalState: etcd holds what the original Merlin left —
// no VIP index, two services on one VIP, objects it accepted that merlin
// finds invalid, values in its etcd2 encoding (base64) as `etcdctl
// migrate` copies them. merlin starts on it: it indexes the VIPs, refuses a new
// service on a migrated VIP, and meradm status lists every finding with
// the command that fixes it; those commands work.
func TestUpgradeFromOriginalState(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Embedded)
	kv := etcd.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	odd := testobj.TCPService("oddsched", "198.18.0.20", 80)
	odd.Config.Scheduler = "bogus"
	heavy := testobj.Server("web", "198.19.0.2", 80, 70000)
	fast := testobj.Server("web", "198.19.0.3", 80, 1)
	fast.HealthCheck = &types.RealServer_HealthCheck{Endpoint: wrapperspb.String("http://:80/"), Period: durationpb.New(50 * time.Millisecond),
		Timeout: durationpb.New(10 * time.Millisecond), UpThreshold: 1, DownThreshold: 1}
	for key, m := range map[string]proto.Message{
		"/merlin/services/oddsched":              odd,
		"/merlin/services/web":                   testobj.TCPService("web", "198.18.0.21", 80),
		"/merlin/services/twin-a":                testobj.TCPService("twin-a", "198.18.0.22", 80),
		"/merlin/services/twin-b":                testobj.TCPService("twin-b", "198.18.0.22", 80),
		"/merlin/servers/web/198.19.0.2:80":      heavy,
		"/merlin/servers/web/198.19.0.3:80":      fast,
		"/merlin/servers/oddsched/198.19.0.4:80": testobj.Server("oddsched", "198.19.0.4", 80, 1),
	} {
		raw, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		value := string(raw)
		if strings.HasPrefix(key, "/merlin/services/twin-") {
			value = base64.StdEncoding.EncodeToString(raw) // from etcd2
		}
		if _, err := kv.Put(ctx, key, value); err != nil {
			t.Fatal(err)
		}
	}
	port, log := startMerlinWithLog(t, "-store-endpoints", etcd.ClientURL)
	fails(t, port, "already used by service", "service", "add", "new", "tcp", "198.18.0.21:80")
	out := ok(t, port, "status")
	for _, want := range []string{
		`/merlin/services/oddsched: invalid service: config.scheduler: unknown scheduler "bogus"`,
		"fix: meradm service edit oddsched -s wlc  # or another scheduler",
		"fix: meradm server edit web 198.19.0.2:80 -w 65535",
		"fix: meradm server edit web 198.19.0.3:80 --health-period 1s --health-timeout 1s",
		"fix: # fix or create service oddsched first",
		"tcp/198.18.0.22:80: services twin-a, twin-b",
		"fix: meradm service del twin-b  # keep twin-a",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(log.String(), "services share a VIP") {
		t.Errorf("merlin's log does not report the shared VIP:\n%s", log)
	}
	ok(t, port, "service", "edit", "oddsched", "-s", "rr")
	ok(t, port, "server", "edit", "web", "198.19.0.2:80", "-w", "100")
	ok(t, port, "server", "edit", "web", "198.19.0.3:80", "--health-period", "1s", "--health-timeout", "1s")
	ok(t, port, "service", "del", "twin-b")
	if out := ok(t, port, "status"); strings.Contains(out, "merlin skips") || strings.Contains(out, "share") {
		t.Errorf("findings left after the fixes:\n%s", out)
	}
	if out := ok(t, port, "list"); !strings.Contains(out, "198.19.0.4:80") || !strings.Contains(out, "oddsched") {
		t.Errorf("the fixed service's server is not listed:\n%s", out)
	}
}

package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/merlin-ipvs/merlin/types"
)

// TestStatusShowsSessions: a session that is up shows its BFD timers and
// its last error as history; one that is down shows why, and since when.
func TestStatusShowsSessions(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-d)) }
	resp := &types.StatusResponse{DesiredRevision: 7, Nodes: []*types.NodeStatus{{
		Node: "lb1", AppliedRevision: 7, LastResult: "ok", VipsAnnounced: 1,
		BgpPeers: []*types.BGPPeer{
			{Address: "198.18.0.1", As: 65000, State: "established", UpSince: ago(time.Minute), PrefixesSent: 1,
				LastError: "hold-timer-expired", LastErrorAt: ago(5 * time.Minute),
				Bfd: &types.BFDSession{State: "up", TxInterval: durationpb.New(300 * time.Millisecond), DetectTime: durationpb.New(900 * time.Millisecond),
					Flaps: 1, LastDown: ago(5 * time.Minute), LastDownReason: "control detection time expired"}},
			{Address: "198.18.0.2", As: 65000, State: "active",
				LastError: "no answer: check the TCP-MD5 password (3 attempts in a row)", LastErrorAt: ago(12 * time.Second),
				Bfd: &types.BFDSession{State: "admin-down"}},
		},
	}}}
	var b strings.Builder
	printStatus(&b, resp, now)
	out := b.String()
	for _, want := range []string{
		"lb1: bgp peer 198.18.0.1 (AS 65000) established for 1m0s, 1 prefixes sent, 0 received, bfd up (300ms, detects in 900ms), 1 flaps, last down 5m0s ago: control detection time expired (last session error 5m0s ago: hold-timer-expired)",
		"lb1: bgp peer 198.18.0.2 (AS 65000) active, 0 prefixes sent, 0 received, bfd admin-down (waits for the BGP session): no answer: check the TCP-MD5 password (3 attempts in a row) (12s ago)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks\n  %s\nin\n%s", want, out)
		}
	}
}

// TestDrainNotesRamp: a ramping drain shows its step and what comes next;
// past the ramp, the graceful shutdown's countdown counts from its end.
func TestDrainNotesRamp(t *testing.T) {
	since := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	n := &types.NodeStatus{Node: "lb1", Drain: &types.DrainStatus{Since: timestamppb.New(since), WithdrawAfter: durationpb.New(5 * time.Second),
		Ramp: durationpb.New(20 * time.Second), RampFraction: 6.0 / 11, RampStep: 5, RampSteps: 10}}
	want := "lb1: draining for 8s: link bandwidth ramping down, step 5 of 10 at 55 %; GRACEFUL_SHUTDOWN in 12s, withdrawn in 17s"
	if got := drainNotes(n, since.Add(8*time.Second)); len(got) != 1 || got[0] != want {
		t.Errorf("ramping: %q\nwant %q", got, want)
	}
	want = "lb1: draining for 22s: VIPs announced with GRACEFUL_SHUTDOWN, withdrawn in 3s"
	if got := drainNotes(n, since.Add(22*time.Second)); len(got) != 1 || got[0] != want {
		t.Errorf("after the ramp: %q\nwant %q", got, want)
	}
}

// TestDrainLine: a server drain's progress as status and --wait print it.
func TestDrainLine(t *testing.T) {
	since := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	d := &types.ServerDrainStatus{ServiceId: "web", Server: "198.19.0.2:8080", Since: timestamppb.New(since), Deadline: timestamppb.New(since.Add(10 * time.Minute)),
		ThenDelete: true, PreviousWeight: 5, State: "draining", Nodes: []*types.ServerDrainNode{
			{Node: "lb1", Reported: true, Active: 3, Inactive: 1}, {Node: "lb2", Reported: true}, {Node: "lb3"}}}
	want := "web 198.19.0.2:8080: draining for 1m0s, deadline in 9m0s, then delete: lb1 3 active 1 inactive, lb2 0, lb3 no report yet"
	if got := drainLine(d, since.Add(time.Minute)); got != want {
		t.Errorf("draining:\n%s\nwant\n%s", got, want)
	}
	d.State, d.CompletedAt, d.ThenDelete = "complete", timestamppb.New(since.Add(90*time.Second)), false
	want = "web 198.19.0.2:8080: drained (every node reported no connection) after 1m30s (weight 0; was 5)"
	if got := drainLine(d, since.Add(time.Hour)); got != want {
		t.Errorf("complete:\n%s\nwant\n%s", got, want)
	}
}

// TestStatusShowsBelowThreshold: a service below its threshold, with the
// action, in the node's notes.
func TestStatusShowsBelowThreshold(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	resp := &types.StatusResponse{Nodes: []*types.NodeStatus{{Node: "lb1", LastResult: "ok", ServicesBelow: []*types.ServiceBelowThreshold{
		{ServiceId: "web", Healthy: 3, Total: 10, Need: 5, Action: "withdraw", Since: timestamppb.New(now.Add(-5 * time.Second))}}}}}
	var b strings.Builder
	printStatus(&b, resp, now)
	if want := "lb1: service web below its healthy threshold (3 of 10 servers up, needs 5) for 5s: withdraw"; !strings.Contains(b.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, b.String())
	}
}

// TestStatusShowsOmitted: a status whose lists were bounded says how many
// servers the node checks and what each list left out.
func TestStatusShowsOmitted(t *testing.T) {
	resp := &types.StatusResponse{Nodes: []*types.NodeStatus{{Node: "lb1", LastResult: "ok", ServersChecked: 2400, ServersUp: 100,
		Servers: []*types.ServerHealth{{ServiceId: "web", Server: "198.19.0.1:80", LastError: "refused"}},
		Omitted: map[string]uint32{"servers": 2299, "vips_not_serving": 150},
	}}}
	var b strings.Builder
	printStatus(&b, resp, time.Now())
	for _, want := range []string{
		"lb1: 2400 servers health-checked, 100 up, 2300 down",
		"lb1: server web/198.19.0.1:80 down, weight 0: refused",
		"lb1: 2299 more servers not listed",
		"lb1: 150 more vips not serving not listed",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
}

package node

import (
	"context"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
)

// fakeDaemons is a kernel's sync daemons as the kernel reports them.
type fakeDaemons struct {
	running []ipvs.SyncDaemon
	refuse  error
}

func (f *fakeDaemons) SyncDaemons(context.Context) ([]ipvs.SyncDaemon, error) {
	return slices.Clone(f.running), nil
}

func (f *fakeDaemons) StartSyncDaemon(_ context.Context, d ipvs.SyncDaemon) error {
	if f.refuse != nil {
		return f.refuse
	}
	if indexRole(f.running, d.Role) >= 0 {
		return ipvs.ErrDaemonRunning
	}
	if d.Port == 0 { // as the kernel reports its defaults
		d.Port = ipvs.DefaultSyncPort
	}
	d.Group, d.TTL, d.MaxLen = ipvs.DefaultSyncGroup, ipvs.DefaultSyncTTL, 1472
	f.running = append(f.running, d)
	return nil
}

func (f *fakeDaemons) StopSyncDaemon(_ context.Context, role ipvs.DaemonRole) error {
	i := indexRole(f.running, role)
	if i < 0 {
		return syscall.ESRCH
	}
	f.running = slices.Delete(f.running, i, i+1)
	return nil
}

func TestSyncSinkKeepsBothDaemons(t *testing.T) {
	ctx := context.Background()
	k := &fakeDaemons{}
	master := ipvs.SyncDaemon{Role: ipvs.Master, Interface: "eth0", SyncID: 3}
	backup := ipvs.SyncDaemon{Role: ipvs.Backup, Interface: "eth0", SyncID: 3}
	s := NewSyncSink(k, nil, 0, nil, master, backup).(*syncSink)
	if err := s.Set(ctx, &Plan{}); err != nil || len(k.running) != 2 {
		t.Fatalf("first set: %v, running %+v", err, k.running)
	}
	if st := s.status(); !st.Daemons[0].Running || !st.Daemons[1].Running || st.Restored != 0 {
		t.Fatalf("status after start: %+v", st)
	}

	// Stopped behind merlin's back, and another started with the wrong ID.
	_ = k.StopSyncDaemon(ctx, ipvs.Backup)
	_ = k.StopSyncDaemon(ctx, ipvs.Master)
	_ = k.StartSyncDaemon(ctx, ipvs.SyncDaemon{Role: ipvs.Master, Interface: "eth0", SyncID: 9})
	if _, err := s.Report(ctx); err != nil {
		t.Fatal(err)
	}
	if len(k.running) != 2 || k.running[0].SyncID != 3 || k.running[1].SyncID != 3 {
		t.Fatalf("not put back: %+v", k.running)
	}
	if st := s.status(); st.Restored != 2 || st.Error != "" {
		t.Fatalf("status after the repair: %+v", st)
	}

	// A kernel that refuses says why, in status.
	k.running, k.refuse = nil, errors.New("ipvs: start master sync daemon: invalid argument")
	if err := s.Set(ctx, &Plan{}); err == nil {
		t.Fatal("a refused start reported no error")
	}
	if st := s.status(); st.Daemons[0].Running || !strings.Contains(st.Error, "invalid argument") {
		t.Fatalf("status of a refused start: %+v", st)
	}
}

// TestSyncWarmUp: a node whose backup merlin started waits at least
// minWarm, then until its table stops growing; one whose backup was
// running (merlin restarted, the node did not) does not wait.
func TestSyncWarmUp(t *testing.T) {
	ctx := context.Background()
	conns := uint64(0)
	count := func(context.Context) (uint64, error) { return conns, nil }
	backup := ipvs.SyncDaemon{Role: ipvs.Backup, Interface: "eth0"}
	s := NewSyncSink(&fakeDaemons{}, count, time.Minute, nil, backup)
	t0 := time.Now()
	if why, _ := s.WarmingUp(ctx, t0); !strings.Contains(why, "waiting for the backup") {
		t.Fatalf("before the daemons: %q", why)
	}
	if err := s.Set(ctx, &Plan{}); err != nil {
		t.Fatal(err)
	}
	why, again := s.WarmingUp(ctx, t0.Add(time.Second))
	if !strings.Contains(why, "at least 20s") || again.Sub(t0) < minWarm {
		t.Fatalf("just started: %q, ask again at +%s", why, again.Sub(t0))
	}
	conns = 500
	if why, _ := s.WarmingUp(ctx, t0.Add(minWarm+time.Second)); !strings.Contains(why, "500 connections so far") {
		t.Fatalf("first count: %q", why)
	}
	conns = 900 // still arriving
	if why, _ := s.WarmingUp(ctx, t0.Add(minWarm+7*time.Second)); !strings.Contains(why, "900 connections") {
		t.Fatalf("growing: %q", why)
	}
	conns = 905 // settled: under 1 % and 10 more
	if why, _ := s.WarmingUp(ctx, t0.Add(minWarm+13*time.Second)); why != "" {
		t.Fatalf("settled: %q", why)
	}

	running := &fakeDaemons{}
	_ = running.StartSyncDaemon(ctx, backup)
	s = NewSyncSink(running, count, time.Minute, nil, backup)
	if err := s.Set(ctx, &Plan{}); err != nil {
		t.Fatal(err)
	}
	if why, _ := s.WarmingUp(ctx, time.Now()); why != "" {
		t.Fatalf("backup found running: %q", why)
	}

	// A backup that cannot start holds the node back only until the maximum.
	s = NewSyncSink(&fakeDaemons{refuse: errors.New("invalid argument")}, count, time.Minute, nil, backup)
	_ = s.Set(ctx, &Plan{})
	if why, _ := s.WarmingUp(ctx, t0); why == "" {
		t.Fatal("served at once with no backup daemon")
	}
	if why, _ := s.WarmingUp(ctx, t0.Add(time.Minute)); why != "" {
		t.Fatalf("after the maximum: %q", why)
	}
}

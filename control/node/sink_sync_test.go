package node

import (
	"context"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"

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
	s := NewSyncSink(k, master, backup).(*syncSink)
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

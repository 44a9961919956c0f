package ipvs

import (
	"errors"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// ipvsadmDaemons reads the namespace's sync daemons with ipvsadm -L
// --daemon, an independent implementation ("master sync daemon
// (mcast=IF, syncid=N, maxlen=N, group=G, port=N, ttl=N)").
func ipvsadmDaemons(t *testing.T, ns *testenv.NetNS) []SyncDaemon {
	t.Helper()
	out := ns.Run(t, "ipvsadm", "-L", "--daemon")
	field := regexp.MustCompile(`(\w+)=([^,)]+)`)
	var ds []SyncDaemon
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		role, _, ok := strings.Cut(strings.TrimSpace(line), " sync daemon")
		if !ok {
			continue
		}
		d := SyncDaemon{Role: map[string]DaemonRole{"master": Master, "backup": Backup}[role]}
		for _, m := range field.FindAllStringSubmatch(line, -1) {
			n, _ := strconv.Atoi(m[2])
			switch m[1] {
			case "mcast":
				d.Interface = m[2]
			case "syncid":
				d.SyncID = uint8(n)
			case "maxlen":
				d.MaxLen = uint16(n)
			case "group":
				d.Group = netip.MustParseAddr(m[2])
			case "port":
				d.Port = uint16(n)
			case "ttl":
				d.TTL = uint8(n)
			}
		}
		ds = append(ds, d)
	}
	slices.SortFunc(ds, func(a, b SyncDaemon) int { return int(a.Role) - int(b.Role) })
	if len(ds) == 0 && strings.TrimSpace(out) != "" {
		t.Fatalf("ipvsadm -L --daemon: unexpected output %q", out)
	}
	return ds
}

func syncDaemons(t *testing.T, c *Client) []SyncDaemon {
	t.Helper()
	ds, err := c.SyncDaemons(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(ds, func(a, b SyncDaemon) int { return int(a.Role) - int(b.Role) })
	return ds
}

// TestKernelSyncDaemonOracle: merlin's sync daemon calls against ipvsadm:
// what one starts the other reads the same, master and backup at once.
func TestKernelSyncDaemonOracle(t *testing.T) {
	c, ns := newKernelClient(t)
	ns.Run(t, "ip", "link", "add", "sync0", "type", "veth", "peer", "name", "sync1")
	ns.Run(t, "ip", "link", "set", "sync0", "up")
	ns.Run(t, "ip", "link", "set", "sync1", "up")
	ctx := ctxT(t)

	master := SyncDaemon{Role: Master, Interface: "sync0", SyncID: 7, MaxLen: 1200, Group: netip.MustParseAddr("239.1.2.3"), Port: 8849, TTL: 2}
	if err := c.StartSyncDaemon(ctx, master); err != nil {
		t.Fatal(err)
	}
	if err := c.StartSyncDaemon(ctx, SyncDaemon{Role: Backup, Interface: "sync0", SyncID: 7, Group: master.Group, Port: 8849}); err != nil {
		t.Fatal(err)
	}
	got, oracle := syncDaemons(t, c), ipvsadmDaemons(t, ns)
	if len(got) != 2 || got[0] != master || !slices.Equal(got, oracle) {
		t.Fatalf("merlin reads %+v, ipvsadm %+v; want master %+v and a backup", got, oracle, master)
	}
	if b := got[1]; b.Interface != "sync0" || b.SyncID != 7 || b.Port != 8849 || b.Group != master.Group || b.TTL != DefaultSyncTTL || b.MaxLen == 0 {
		t.Errorf("the backup with the kernel's defaults: %+v", b)
	}
	if err := c.StartSyncDaemon(ctx, master); !errors.Is(err, ErrDaemonRunning) {
		t.Errorf("a second master: %v, want ErrDaemonRunning", err)
	}

	// ipvsadm starts, merlin reads; merlin stops, ipvsadm reads.
	if err := c.StopSyncDaemon(ctx, Master); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "ipvsadm", "--start-daemon", "master", "--mcast-interface", "sync1", "--syncid", "9", "--sync-maxlen", "1000",
		"--mcast-group", "239.4.5.6", "--mcast-port", "8850", "--mcast-ttl", "3")
	want := SyncDaemon{Role: Master, Interface: "sync1", SyncID: 9, MaxLen: 1000, Group: netip.MustParseAddr("239.4.5.6"), Port: 8850, TTL: 3}
	if got := syncDaemons(t, c); len(got) != 2 || got[0] != want {
		t.Fatalf("after ipvsadm --start-daemon: %+v, want master %+v", got, want)
	}
	if err := c.StopSyncDaemon(ctx, Backup); err != nil {
		t.Fatal(err)
	}
	if oracle := ipvsadmDaemons(t, ns); len(oracle) != 1 || oracle[0] != want {
		t.Fatalf("ipvsadm after merlin stopped the backup: %+v", oracle)
	}
	ns.Run(t, "ipvsadm", "--stop-daemon", "master")
	if got := syncDaemons(t, c); len(got) != 0 {
		t.Fatalf("after ipvsadm --stop-daemon: %+v", got)
	}
	if err := c.StopSyncDaemon(ctx, Master); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("stopping a daemon that does not run: %v, want ESRCH", err)
	}

	// Defaults, and what the kernel refuses.
	if err := c.StartSyncDaemon(ctx, SyncDaemon{Role: Master, Interface: "sync0"}); err != nil {
		t.Fatal(err)
	}
	if got := syncDaemons(t, c); len(got) != 1 || got[0].Group != DefaultSyncGroup || got[0].Port != DefaultSyncPort || got[0].TTL != DefaultSyncTTL {
		t.Errorf("a master with the defaults reads %+v", got)
	}
	for what, bad := range map[string]SyncDaemon{
		"interface":              {Role: Backup, Interface: "a-name-of-16-byt"},
		"group":                  {Role: Backup, Interface: "sync0", Group: netip.MustParseAddr("198.18.0.1")},
		"role":                   {Interface: "sync0"},
		"no such device (sync9)": {Role: Backup, Interface: "sync9"},
	} {
		if err := c.StartSyncDaemon(ctx, bad); err == nil {
			t.Errorf("%s: started %+v", what, bad)
		}
	}
}

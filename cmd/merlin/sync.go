package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/merlin-ipvs/merlin/control/node"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/datapath/netif"
)

// syncFlags configure the IPVS connection sync daemons: every node runs a
// master (sending its connections) and a backup (taking the others') on
// the same interface, group and sync ID.
type syncFlags struct {
	iface   string
	id      uint
	group   string
	port    uint
	ttl     uint
	maxLen  uint
	warmMax time.Duration
}

func (f *syncFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.iface, "sync-interface", "", "run IPVS connection sync (a master and a backup daemon) over this interface, so that a flow a router moves to another node keeps its real server; empty: off")
	fs.UintVar(&f.id, "sync-id", 0, "connection sync ID (0-255): the same on every node of the cluster, different from other clusters on the same network")
	fs.StringVar(&f.group, "sync-group", "", "connection sync multicast group (default the kernel's, 224.0.0.81)")
	fs.UintVar(&f.port, "sync-port", 0, "connection sync UDP port (default the kernel's, 8848)")
	fs.UintVar(&f.ttl, "sync-ttl", 0, "connection sync multicast TTL (default 1: the nodes share a link)")
	fs.UintVar(&f.maxLen, "sync-maxlen", 0, "largest connection sync message payload (default: from the interface's MTU)")
	fs.DurationVar(&f.warmMax, "sync-warmup-max", node.DefaultSyncWarmMax, "longest a starting node waits for its connection table to catch up with the other nodes' before it announces its VIPs")
}

// daemons is the master and backup the flags ask for (nil: sync is off).
func (f *syncFlags) daemons() ([]ipvs.SyncDaemon, error) {
	if f.iface == "" {
		if f.id != 0 || f.group != "" || f.port != 0 || f.ttl != 0 || f.maxLen != 0 {
			return nil, fmt.Errorf("-sync-id, -sync-group, -sync-port, -sync-ttl, -sync-maxlen: given without -sync-interface")
		}
		return nil, nil
	}
	d := ipvs.SyncDaemon{Interface: f.iface}
	switch {
	case len(f.iface) > 15:
		return nil, fmt.Errorf("-sync-interface %q: at most 15 bytes", shorten(f.iface))
	case f.id > 255:
		return nil, fmt.Errorf("-sync-id %d: want 0 to 255", f.id)
	case f.port > 65535:
		return nil, fmt.Errorf("-sync-port %d: want 1 to 65535", f.port)
	case f.ttl > 255:
		return nil, fmt.Errorf("-sync-ttl %d: want 1 to 255", f.ttl)
	case f.warmMax < 0 || f.warmMax > time.Hour:
		return nil, fmt.Errorf("-sync-warmup-max %s: want 0 to 1h", f.warmMax)
	case f.maxLen > 65535:
		return nil, fmt.Errorf("-sync-maxlen %d: want up to 65535", f.maxLen)
	}
	if f.group != "" {
		g, err := netip.ParseAddr(f.group)
		if err != nil || !g.IsMulticast() {
			return nil, fmt.Errorf("-sync-group %q: want a multicast address", shorten(f.group))
		}
		d.Group = g
	}
	d.SyncID, d.Port, d.TTL, d.MaxLen = uint8(f.id), uint16(f.port), uint8(f.ttl), uint16(f.maxLen)
	master, backup := d, d
	master.Role, backup.Role = ipvs.Master, ipvs.Backup
	return []ipvs.SyncDaemon{master, backup}, nil
}

// syncLink watches the sync interface's carrier for the warm-up and keeps
// the last count it saw in DATA-DIR/sync-link with the kernel's boot ID, so
// that a merlin started again on the same boot knows whether the link
// changed while it was away (a count from another boot means nothing).
type syncLink struct {
	iface, file string
	bootID      func() (string, error)
}

func newSyncLink(iface, dataDir string) *syncLink {
	return &syncLink{iface: iface, file: filepath.Join(dataDir, "sync-link"), bootID: kernelBootID}
}

func kernelBootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b)), err
}

func (l *syncLink) Carrier() (bool, uint64, error) { return netif.Carrier(l.iface) }

func (l *syncLink) Recorded() (uint64, bool) {
	boot, err := l.bootID()
	b, rerr := os.ReadFile(l.file)
	if err != nil || rerr != nil || len(b) > 256 {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 3 || f[0] != boot || f[1] != l.iface {
		return 0, false
	}
	n, err := strconv.ParseUint(f[2], 10, 64)
	return n, err == nil
}

func (l *syncLink) Record(changes uint64) error {
	boot, err := l.bootID()
	if err != nil {
		return fmt.Errorf("kernel boot id: %w", err)
	}
	tmp := l.file + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%s %s %d\n", boot, l.iface, changes), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, l.file)
}

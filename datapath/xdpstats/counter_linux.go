//go:build linux

package xdpstats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/merlin-ipvs/merlin/internal/lowprio"
)

// Defaults of Config.
const (
	DefaultPinDir     = "/sys/fs/bpf/merlin"
	DefaultMaxVIPs    = 16384
	DefaultMaxServers = 131072
	maxLocals         = 4096
	// RefreshPeriod is how often Run re-reads the neighbour table (for
	// direct-routing servers' MACs) and the node's own addresses.
	RefreshPeriod = 2 * time.Second
)

// XDP attach modes.
const (
	XDPAuto    = ""        // native where the driver has it, generic otherwise
	XDPNative  = "native"  // in the driver
	XDPGeneric = "generic" // after the driver, slower, works everywhere
)

// Config says where to count and how much room the maps have.
type Config struct {
	XDPInterfaces []string // ingress: where client traffic arrives
	XDPMode       string   // XDPAuto, XDPNative or XDPGeneric
	TCInterfaces  []string // backend side: where IPVS sends packets to real servers
	MaxVIPs       int      // VIP:port:protocol keys (and as many VIP addresses)
	MaxServers    int      // real-server keys of all services
	PinDir        string   // in bpffs; maps under maps/, links under links/
}

// Validate checks the configuration; errors name the setting.
func (c *Config) Validate() error {
	switch c.XDPMode {
	case XDPAuto, XDPNative, XDPGeneric:
	default:
		return fmt.Errorf("counters xdp mode %.16q: want native, generic or empty", c.XDPMode)
	}
	if len(c.XDPInterfaces)+len(c.TCInterfaces) == 0 {
		return errors.New("counters: no interface to count on (xdp or tc interfaces)")
	}
	for _, n := range append(append([]string{}, c.XDPInterfaces...), c.TCInterfaces...) {
		if n == "" || len(n) > 15 || filepath.Base(n) != n {
			return fmt.Errorf("counters interface %.20q: not an interface name", n)
		}
	}
	if c.MaxVIPs < 0 || c.MaxVIPs > 1<<20 {
		return fmt.Errorf("counters max vips %d: want 1 to %d", c.MaxVIPs, 1<<20)
	}
	if c.MaxServers < 0 || c.MaxServers > 1<<22 {
		return fmt.Errorf("counters max servers %d: want 1 to %d", c.MaxServers, 1<<22)
	}
	if c.PinDir != "" && !filepath.IsAbs(c.PinDir) {
		return fmt.Errorf("counters pin dir %.40q: want an absolute path", c.PinDir)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.MaxVIPs == 0 {
		c.MaxVIPs = DefaultMaxVIPs
	}
	if c.MaxServers == 0 {
		c.MaxServers = DefaultMaxServers
	}
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	return c
}

// Counter owns the programs, maps and links. New starts nothing; Open loads
// and attaches; Set gives it the keys; Run keeps neighbour-derived keys
// fresh; Close lets go of the file descriptors (pins keep counting).
type Counter struct {
	cfg Config
	log *slog.Logger

	mu             sync.Mutex
	objs           *countersObjects
	links          []link.Link
	status         Status
	planned        *planned                     // nil before the first Set: until then the pinned keys stay as they are
	plannedDropped int                          // planned keys that did not fit at their last sync
	routeMAC       map[countersMacKey]ServerKey // direct-routing map keys → their server
	held           held
}

// fullSyncRounds: every this many refreshes, the keys are read back from
// the kernel rather than trusted (Resync).
const fullSyncRounds = 30

// repairNice is the nice value of Resync's read, as the node's other
// background reads of kernel tables.
const repairNice = 10

// New returns a Counter for cfg (see Config.Validate).
func New(cfg Config, log *slog.Logger) *Counter {
	return &Counter{cfg: cfg.withDefaults(), log: log, status: Status{Reason: "not started"}}
}

// Open loads the programs, reuses or creates the pinned maps, and attaches
// to every configured interface. On error nothing it attached stays, the
// status says why, and the caller runs on without counters.
func (c *Counter) Open(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.open(); err != nil {
		c.closeLocked()
		c.status = Status{Reason: err.Error()}
		return err
	}
	c.status.On, c.status.Reason = true, ""
	return nil
}

func (c *Counter) open() error {
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones
	// to the memory cgroup, and this does nothing.
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raise RLIMIT_MEMLOCK for BPF maps: %w", err)
	}
	if err := ensureBPFFS(c.cfg.PinDir); err != nil {
		return err
	}
	objs, err := c.load()
	if err != nil {
		return err
	}
	c.objs, c.held = objs, held{}
	return c.attachAll()
}

// load loads the collection, sharing the maps pinned by an earlier run. Maps
// of another size or layout are replaced: their counts restart at zero.
func (c *Counter) load() (*countersObjects, error) {
	mapDir := filepath.Join(c.cfg.PinDir, "maps")
	if err := os.MkdirAll(mapDir, 0o700); err != nil {
		return nil, fmt.Errorf("counters pin dir: %w", err)
	}
	for attempt := 0; ; attempt++ {
		spec, err := loadCounters()
		if err != nil {
			return nil, err
		}
		sizes := mapSizes(c.cfg.MaxVIPs, c.cfg.MaxServers)
		for name, n := range sizes {
			spec.Maps[name].MaxEntries = uint32(n)
		}
		objs := &countersObjects{}
		err = spec.LoadAndAssign(objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: mapDir}})
		if err == nil {
			return objs, nil
		}
		if !errors.Is(err, ebpf.ErrMapIncompatible) || attempt > 0 {
			return nil, fmt.Errorf("load counter programs: %w", err)
		}
		c.log.Warn("counter maps pinned by an earlier run have another size; counts restart at zero", "dir", mapDir, "error", err)
		for name := range sizes {
			if err := os.Remove(filepath.Join(mapDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("remove old counter map: %w", err)
			}
		}
	}
}

// Status reports the counters' state.
func (c *Counter) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Attached = append([]Attachment(nil), s.Attached...)
	return s
}

// Close releases the file descriptors. Pinned links and maps stay: the
// programs go on counting until the next Open takes them over, or Remove.
func (c *Counter) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked()
	c.status = Status{Reason: "closed"}
	return nil
}

func (c *Counter) closeLocked() {
	for _, l := range c.links {
		_ = l.Close()
	}
	c.links = nil
	if c.objs != nil {
		_ = c.objs.Close()
		c.objs = nil
	}
}

// Run refreshes what derives from the node's tables (direct-routing MACs,
// local addresses) every RefreshPeriod, and every fullSyncRounds of them
// repairs the maps' keys (Resync), until ctx ends.
func (c *Counter) Run(ctx context.Context) {
	t := time.NewTicker(RefreshPeriod)
	defer t.Stop()
	for rounds := 1; ; rounds++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if rounds%fullSyncRounds == 0 {
			c.Resync()
			continue
		}
		c.mu.Lock()
		if c.objs != nil && c.planned != nil {
			if err := c.syncLocked(false); err != nil {
				c.log.Warn("refresh counter keys", "error", err)
			}
		}
		c.mu.Unlock()
	}
}

// Resync reads the maps' keys back from the kernel and brings them to the
// planned ones, repairing what another program changed; the node-derived
// keys are refreshed with them. The read (a system call per key: seconds
// at 100,000 keys under emulation) runs at low priority on clones of the
// maps, without the lock, so Set, Update and Read go on meanwhile: the
// repair then adds only what is missing (never resetting a count) and
// deletes only what is not planned, so changes made during the read stand.
func (c *Counter) Resync() {
	c.mu.Lock()
	objs := c.objs
	var clones *countersMaps
	var err error
	if objs != nil && c.planned != nil {
		clones, err = cloneMaps(objs)
	}
	c.mu.Unlock()
	if clones == nil {
		if err != nil {
			c.log.Warn("repair counter keys", "error", err)
		}
		return
	}
	var fresh held
	lowprio.Run(repairNice, func() { fresh, err = readHeld(clones) })
	_ = clones.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil || c.objs != objs {
		if err != nil {
			c.log.Warn("repair counter keys", "error", err)
		}
		return
	}
	c.held = fresh
	if err := c.syncLocked(true); err != nil {
		c.log.Warn("repair counter keys", "error", err)
	}
}

// mapSizes gives every map its size: each family's map of a role can hold
// the whole configured number (a node may serve only IPv6).
func mapSizes(maxVIPs, maxServers int) map[string]int {
	return map[string]int{
		countersMapVips4: maxVIPs, countersMapVips6: maxVIPs, countersMapUnmatched4: maxVIPs, countersMapUnmatched6: maxVIPs,
		countersMapForwarded4: maxServers, countersMapForwarded6: maxServers, countersMapForwardedMac: maxServers,
		countersMapReplies4: maxServers, countersMapReplies6: maxServers,
		countersMapLocals4: maxLocals, countersMapLocals6: maxLocals,
	}
}

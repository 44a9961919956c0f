//go:build linux

package xdpstats

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// clsact filters merlin attaches carry this name, handle and priority, so it
// knows them again and never touches anyone else's.
const (
	filterName     = "merlin_counters"
	filterHandle   = 0x4d4c
	filterPriority = 1
)

// ensureBPFFS makes sure dir can hold pins: on a bpffs, mounting one at
// /sys/fs/bpf when nothing is mounted there (as systemd would have).
func ensureBPFFS(dir string) error {
	if !isBPFFS("/sys/fs/bpf") && strings.HasPrefix(filepath.Clean(dir)+"/", "/sys/fs/bpf/") {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at /sys/fs/bpf: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("counters pin dir: %w", err)
	}
	if !isBPFFS(dir) {
		return fmt.Errorf("counters pin dir %.60s is not on a bpffs", dir)
	}
	return nil
}

func isBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC
}

func (c *Counter) attachAll() error {
	if err := os.MkdirAll(filepath.Join(c.cfg.PinDir, "links"), 0o700); err != nil {
		return fmt.Errorf("counters pin dir: %w", err)
	}
	c.status.Attached = nil
	for _, name := range c.cfg.XDPInterfaces {
		if err := c.attachXDP(name); err != nil {
			return fmt.Errorf("xdp on %s: %w", name, err)
		}
	}
	for _, name := range c.cfg.TCInterfaces {
		for _, dir := range []string{"egress", "ingress"} {
			if err := c.attachTC(name, dir); err != nil {
				return fmt.Errorf("tc %s on %s: %w", dir, name, err)
			}
		}
	}
	c.unpinUnused()
	return nil
}

// unpinUnused detaches links an earlier run pinned on interfaces no longer
// configured.
func (c *Counter) unpinUnused() {
	used := map[string]bool{}
	for _, name := range c.cfg.XDPInterfaces {
		used["xdp-"+name] = true
	}
	for _, name := range c.cfg.TCInterfaces {
		used["tcx-egress-"+name], used["tcx-ingress-"+name] = true, true
	}
	dir := filepath.Join(c.cfg.PinDir, "links")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if used[e.Name()] {
			continue
		}
		if l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil); err == nil {
			_ = l.Unpin()
			_ = l.Close()
			c.log.Info("detached counters from an interface no longer configured", "pin", e.Name())
		}
	}
}

// takeOver reuses a link pinned by an earlier run on the same interface,
// giving it the freshly loaded program. A stale pin (its interface gone) is
// removed.
func takeOver(pin string, ifindex int, prog *ebpf.Program) (link.Link, bool) {
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return nil, false
	}
	info, err := l.Info()
	same := false
	if err == nil {
		if x := info.XDP(); x != nil {
			same = int(x.Ifindex) == ifindex
		} else if t := info.TCX(); t != nil {
			same = int(t.Ifindex) == ifindex
		}
	}
	if same && l.Update(prog) == nil {
		return l, true
	}
	_ = l.Unpin()
	_ = l.Close()
	return nil, false
}

func (c *Counter) attachXDP(name string) error {
	nl, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("interface: %w", err)
	}
	ifindex := nl.Attrs().Index
	pin := filepath.Join(c.cfg.PinDir, "links", "xdp-"+name)
	l, ok := takeOver(pin, ifindex, c.objs.CountVips)
	if !ok {
		if x := nl.Attrs().Xdp; x != nil && x.Attached {
			return fmt.Errorf("the interface has an XDP program merlin did not attach (id %d); leaving it alone, counters off", x.ProgId)
		}
		if l, err = c.linkXDP(ifindex); err != nil {
			return err
		}
		if err := l.Pin(pin); err != nil {
			_ = l.Close()
			return fmt.Errorf("pin xdp link: %w", err)
		}
	}
	c.links = append(c.links, l)
	c.status.Attached = append(c.status.Attached, Attachment{Interface: name, Hook: "xdp " + xdpMode(name)})
	return nil
}

func (c *Counter) linkXDP(ifindex int) (link.Link, error) {
	opts := link.XDPOptions{Program: c.objs.CountVips, Interface: ifindex}
	switch c.cfg.XDPMode {
	case XDPNative:
		opts.Flags = link.XDPDriverMode
	case XDPGeneric:
		opts.Flags = link.XDPGenericMode
	default:
		opts.Flags = link.XDPDriverMode
		l, err := link.AttachXDP(opts)
		if err == nil {
			return l, nil
		}
		opts.Flags = link.XDPGenericMode
	}
	l, err := link.AttachXDP(opts)
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	return l, nil
}

// xdpMode is how the kernel says the interface's XDP program runs.
func xdpMode(name string) string {
	nl, err := netlink.LinkByName(name)
	if err != nil || nl.Attrs().Xdp == nil {
		return "unknown"
	}
	switch nl.Attrs().Xdp.AttachMode {
	case 1:
		return XDPNative
	case 2:
		return XDPGeneric
	case 3:
		return "offload"
	}
	return "unknown"
}

func (c *Counter) attachTC(name, dir string) error {
	nl, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("interface: %w", err)
	}
	prog, attach := c.objs.CountForwarded, ebpf.AttachTCXEgress
	if dir == "ingress" {
		prog, attach = c.objs.CountReplies, ebpf.AttachTCXIngress
	}
	pin := filepath.Join(c.cfg.PinDir, "links", "tcx-"+dir+"-"+name)
	l, ok := takeOver(pin, nl.Attrs().Index, prog)
	if !ok {
		l, err = link.AttachTCX(link.TCXOptions{Interface: nl.Attrs().Index, Program: prog, Attach: attach})
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
			if err := attachClsact(nl, dir, prog); err != nil {
				return err
			}
			c.status.Attached = append(c.status.Attached, Attachment{Interface: name, Hook: "clsact " + dir})
			return nil
		}
		if err != nil {
			return fmt.Errorf("attach tcx: %w", err)
		}
		if err := l.Pin(pin); err != nil {
			_ = l.Close()
			return fmt.Errorf("pin tcx link: %w", err)
		}
	}
	c.links = append(c.links, l)
	c.status.Attached = append(c.status.Attached, Attachment{Interface: name, Hook: "tcx " + dir})
	return nil
}

func clsactParent(dir string) uint32 {
	if dir == "ingress" {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// attachClsact puts prog on the interface's clsact qdisc (added if missing),
// replacing only a filter merlin put there itself.
func attachClsact(nl netlink.Link, dir string, prog *ebpf.Program) error {
	qdisc := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: nl.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	filters, err := netlink.FilterList(nl, clsactParent(dir))
	if err != nil {
		return fmt.Errorf("list tc filters: %w", err)
	}
	for _, f := range filters {
		a := f.Attrs()
		bf, isBPF := f.(*netlink.BpfFilter)
		if a.Handle == filterHandle && a.Priority == filterPriority && (!isBPF || bf.Name != filterName) {
			return fmt.Errorf("a tc filter merlin did not attach holds handle %#x priority %d; leaving it alone, counters off", filterHandle, filterPriority)
		}
	}
	f := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: nl.Attrs().Index, Parent: clsactParent(dir), Handle: filterHandle, Priority: filterPriority, Protocol: unix.ETH_P_ALL},
		Fd:           prog.FD(),
		Name:         filterName,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("attach clsact filter: %w", err)
	}
	return nil
}

// Remove detaches every program merlin attached (pinned links, and its
// clsact filters on every interface of this network namespace) and deletes
// the pins under pinDir.
func Remove(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	var errs []error
	links, _ := os.ReadDir(filepath.Join(pinDir, "links"))
	for _, e := range links {
		p := filepath.Join(pinDir, "links", e.Name())
		if l, err := link.LoadPinnedLink(p, nil); err == nil {
			_ = l.Unpin()
			_ = l.Close()
		} else if err := os.Remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	all, err := netlink.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("list interfaces: %w", err))
	}
	for _, nl := range all {
		for _, dir := range []string{"egress", "ingress"} {
			filters, _ := netlink.FilterList(nl, clsactParent(dir))
			for _, f := range filters {
				if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == filterName && f.Attrs().Handle == filterHandle {
					if err := netlink.FilterDel(f); err != nil {
						errs = append(errs, fmt.Errorf("remove tc filter on %s: %w", nl.Attrs().Name, err))
					}
				}
			}
		}
	}
	if err := os.RemoveAll(pinDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

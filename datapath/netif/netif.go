// Package netif puts the VIPs a node serves on a dummy interface and sets
// the sysctls an IPVS director needs, in the caller's network namespace.
// It removes only the addresses it added itself (remembered in a file, so
// across restarts too). It needs CAP_NET_ADMIN (and write access to
// /proc/sys for the sysctls).
package netif

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// DirectorSysctls are set by default: keep connection tracking for IPVS
// connections (needed by NAT with netfilter), expire connections to a
// deleted destination at once, and expire persistence templates of a
// quiesced (weight 0) destination so drained servers really drain, and
// take over TCP and SCTP connections begun on another node (sloppy): when
// routers rehash a flow to this node after another withdrew, a mid-flow
// packet is scheduled like a new connection — with the mh scheduler on
// every node, to the same real server — instead of being reset. Accept
// packets from a local address (accept_local): the answers to a check
// through the VIP come from the VIP, which the node holds too.
var DirectorSysctls = map[string]string{
	"net/ipv4/conf/all/accept_local":        "1",
	"net/ipv4/vs/sloppy_tcp":                "1",
	"net/ipv4/vs/sloppy_sctp":               "1",
	"net/ipv4/vs/conntrack":                 "1",
	"net/ipv4/vs/expire_nodest_conn":        "1",
	"net/ipv4/vs/expire_quiescent_template": "1",
	"net/ipv4/ip_forward":                   "1",
}

// SyncSysctls are set on a node that runs the IPVS connection sync daemons
// (datapath/ipvs SyncDaemon), with why:
//   - sync_version 1: the protocol that carries IPv6 connections, firewall
//     marks and each connection's timeout (version 0: IPv4 only).
//   - sync_persist_mode 0: every connection is sent, not only persistence
//     templates: a flow a router moves to another node must find its real
//     server there whatever the scheduler (wlc, rr, sh as well as mh).
//   - sync_ports 1: one sync thread and one multicast port. Every node must
//     use the same number (a node with more sends from ports the others do
//     not listen on), and one thread carries a director's churn.
//   - sync_threshold "3 0" with sync_refresh_period 10: a connection is
//     sent once established, on each state change (closing), and again
//     on its first packet once 10 s have passed since it was last sent.
//     The kernel's default ("3 50", refresh 0) sends at the 3rd packet and
//     then every 50th: a flow of a message every few hundred ms would
//     reach a node that joins only after minutes, and a quiet one never.
//     A busy flow now costs one message per 10 s; every active flow
//     reaches a joining node within 10 s, which is what the warm-up gate
//     waits for (control/node SyncRefreshPeriod: keep the two equal). The
//     period must be 0 for the refresh to send: with a period the packet
//     count decides first (seen in the VM: most flows never re-sent). A
//     half-open connection (a SYN flood) is never sent.
var SyncSysctls = map[string]string{
	"net/ipv4/vs/sync_version":        "1",
	"net/ipv4/vs/sync_persist_mode":   "0",
	"net/ipv4/vs/sync_ports":          "1",
	"net/ipv4/vs/sync_threshold":      "3 0",
	"net/ipv4/vs/sync_refresh_period": "10",
}

// SetSysctls writes each key (a path under /proc/sys, with / or .) and
// returns every failure together.
func SetSysctls(values map[string]string) error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(values)) {
		path := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
		if err := os.WriteFile(path, []byte(values[k]), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("sysctl %s=%s: %w", k, values[k], err))
		}
	}
	return errors.Join(errs...)
}

// VIPs keeps a dummy interface holding exactly the VIPs it is given, plus
// any addresses others put there.
type VIPs struct {
	mu        sync.Mutex
	link      string
	stateFile string
	added     map[netip.Addr]bool
}

// NewVIPs manages addresses on the dummy interface name (created if
// missing, brought up); stateFile remembers which addresses it added.
func NewVIPs(name, stateFile string) (*VIPs, error) {
	v := &VIPs{link: name, stateFile: stateFile, added: map[netip.Addr]bool{}}
	b, err := os.ReadFile(stateFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", stateFile, err)
	default:
		var addrs []netip.Addr
		if err := json.Unmarshal(b, &addrs); err != nil {
			return nil, fmt.Errorf("VIP state file %s is corrupt: %w", stateFile, err)
		}
		for _, a := range addrs {
			v.added[a] = true
		}
	}
	return v, nil
}

func (v *VIPs) save() error {
	addrs := make([]netip.Addr, 0, len(v.added))
	for a := range v.added {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	b, err := json.Marshal(addrs)
	if err != nil {
		return err
	}
	tmp := v.stateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	return os.Rename(tmp, v.stateFile)
}

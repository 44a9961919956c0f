package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/mdlayher/netlink"
)

// The connection synchronisation daemon: the kernel sends the connections
// of this director (master) to the others over multicast, and takes theirs
// (backup), so that a flow a router moves here keeps its real server.
// One master and one backup may run at once per network namespace.

const (
	cmdNewDaemon = 9
	cmdDelDaemon = 10
	cmdGetDaemon = 11

	attrCmdDaemon = 3

	attrDaemonState      = 1
	attrDaemonMcastIfn   = 2
	attrDaemonSyncID     = 3
	attrDaemonSyncMaxLen = 4
	attrDaemonGroup      = 5
	attrDaemonGroup6     = 6
	attrDaemonPort       = 7
	attrDaemonTTL        = 8
)

// DaemonRole is what a sync daemon does.
type DaemonRole uint32

// The two roles (IP_VS_STATE_MASTER, IP_VS_STATE_BACKUP).
const (
	Master DaemonRole = 1
	Backup DaemonRole = 2
)

func (r DaemonRole) String() string {
	switch r {
	case Master:
		return "master"
	case Backup:
		return "backup"
	}
	return fmt.Sprintf("role(%d)", uint32(r))
}

// SyncDaemon is one connection synchronisation daemon. Zero optional fields
// take the kernel's defaults (as ipvsadm's): group 224.0.0.81 (ff02::8178 for
// an IPv6 group), port 8848, TTL 1, and a message length from the
// interface's MTU.
type SyncDaemon struct {
	Role      DaemonRole
	Interface string // multicast interface, at most 15 bytes
	SyncID    uint8  // a daemon takes only messages with its own sync ID
	MaxLen    uint16 // largest sync message payload (0: from the MTU)
	Group     netip.Addr
	Port      uint16
	TTL       uint8
}

// Default values the kernel reports for a daemon started without them.
const (
	DefaultSyncPort = 8848
	DefaultSyncTTL  = 1
)

// DefaultSyncGroup is the kernel's IPv4 multicast group (IP_VS_SYNC_GROUP).
var DefaultSyncGroup = netip.MustParseAddr("224.0.0.81")

func (d SyncDaemon) validate() error {
	if d.Role != Master && d.Role != Backup {
		return fmt.Errorf("role %d: want master or backup", d.Role)
	}
	if d.Interface == "" || len(d.Interface) > 15 {
		return fmt.Errorf("interface %q: want a name of 1 to 15 bytes", d.Interface)
	}
	if d.Group.IsValid() && !d.Group.IsMulticast() {
		return fmt.Errorf("group %s: not a multicast address", d.Group)
	}
	return nil
}

// encode is IPVS_CMD_ATTR_DAEMON with the fields set.
func (d SyncDaemon) encode() []byte {
	e := encoder{}
	off := e.nest(attrCmdDaemon)
	e.u32(attrDaemonState, uint32(d.Role))
	e.str(attrDaemonMcastIfn, d.Interface)
	e.u32(attrDaemonSyncID, uint32(d.SyncID))
	if d.MaxLen != 0 {
		e.u16(attrDaemonSyncMaxLen, d.MaxLen)
	}
	switch {
	case d.Group.Is4():
		a := d.Group.As4()
		e.attr(attrDaemonGroup, a[:])
	case d.Group.Is6():
		a := d.Group.As16()
		e.attr(attrDaemonGroup6, a[:])
	}
	if d.Port != 0 {
		e.u16(attrDaemonPort, d.Port) // host order (ipvsadm and the kernel agree; not the service port's big-endian)
	}
	if d.TTL != 0 {
		e.u8(attrDaemonTTL, d.TTL)
	}
	e.end(off)
	return e.b
}

// decodeDaemon reads one daemon of a GET_DAEMON dump.
func decodeDaemon(msg []byte) (SyncDaemon, error) {
	var d SyncDaemon
	payload, err := genlPayload(msg)
	if err != nil {
		return d, err
	}
	err = attrs(payload, func(typ uint16, v []byte) error {
		if typ != attrCmdDaemon {
			return nil
		}
		return attrs(v, d.decodeAttr)
	})
	if err == nil && d.Role == 0 {
		err = errMalformed
	}
	return d, err
}

func (d *SyncDaemon) decodeAttr(typ uint16, v []byte) error {
	var err error
	var n uint32
	switch typ {
	case attrDaemonState:
		n, err = getU32(v)
		d.Role = DaemonRole(n)
	case attrDaemonMcastIfn:
		d.Interface = getString(v)
	case attrDaemonSyncID:
		n, err = getU32(v)
		d.SyncID = uint8(n)
	case attrDaemonSyncMaxLen:
		d.MaxLen, err = getU16(v)
	case attrDaemonGroup:
		d.Group, err = getAddr(IPv4, v)
	case attrDaemonGroup6:
		d.Group, err = getAddr(IPv6, v)
	case attrDaemonPort:
		d.Port, err = getU16(v)
	case attrDaemonTTL:
		if len(v) < 1 {
			return errMalformed
		}
		d.TTL = v[0]
	}
	return err
}

// SyncDaemons lists the running sync daemons (none, a master, a backup or
// both).
func (c *Client) SyncDaemons(ctx context.Context) ([]SyncDaemon, error) {
	end, err := c.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer end()
	var out []SyncDaemon
	err = c.request(cmdGetDaemon, netlink.Dump, nil, func(data []byte) error {
		d, err := decodeDaemon(data)
		if err != nil {
			return err
		}
		out = append(out, d)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipvs: list sync daemons: %w", err)
	}
	return out, nil
}

// ErrDaemonRunning: a daemon of that role runs already (stop it first).
var ErrDaemonRunning = errors.New("a sync daemon of that role is running")

// StartSyncDaemon starts a daemon. The kernel refuses (EEXIST, wrapped as
// ErrDaemonRunning) when one of the role runs, and (EINVAL) while a
// service has destinations of another address family: the sync protocol
// cannot carry them.
func (c *Client) StartSyncDaemon(ctx context.Context, d SyncDaemon) error {
	if err := d.validate(); err != nil {
		return fmt.Errorf("ipvs: start sync daemon: %w", err)
	}
	err := c.command(ctx, "start "+d.Role.String()+" sync daemon", cmdNewDaemon, d.encode(), nil)
	if errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("%w: %w", ErrDaemonRunning, err)
	}
	return err
}

// StopSyncDaemon stops the daemon of a role (ESRCH when none runs).
func (c *Client) StopSyncDaemon(ctx context.Context, role DaemonRole) error {
	e := encoder{}
	off := e.nest(attrCmdDaemon)
	e.u32(attrDaemonState, uint32(role))
	e.end(off)
	return c.command(ctx, "stop "+role.String()+" sync daemon", cmdDelDaemon, e.b, nil)
}

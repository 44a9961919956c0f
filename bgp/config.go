package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/merlin-ipvs/merlin/bgp/bfd"
)

// Family is an address family a session carries.
type Family string

// The families merlin announces.
const (
	IPv4Unicast Family = "ipv4-unicast"
	IPv6Unicast Family = "ipv6-unicast"
)

// Config is one node's speaker.
type Config struct {
	LocalAS  uint32
	RouterID netip.Addr // IPv4
	// ListenPort: 0 does not listen (merlin dials out; passive peers need a
	// listener); 179 needs CAP_NET_BIND_SERVICE.
	ListenPort      int
	ListenAddresses []netip.Addr
	// NextHopIPv6 is the next hop of IPv6 routes sent over an IPv4 session
	// (an IPv6 session uses its own local address).
	NextHopIPv6 netip.Addr
	Peers       []Peer
}

// Peer is one BGP neighbour (a router).
type Peer struct {
	Address netip.Addr
	AS      uint32
	Port    int        // 0: 179
	Local   netip.Addr // source address; unset: the kernel's choice
	// Password is the TCP-MD5 key (read from a file by the caller, never
	// taken from a command line).
	Password        string
	HoldTime        time.Duration // 0: 90 s
	KeepaliveTime   time.Duration // 0: a third of the hold time
	ConnectRetry    time.Duration // 0: 5 s
	MultihopTTL     int           // eBGP multihop TTL; 0: directly connected
	Passive         bool          // wait for the router to connect
	GracefulRestart time.Duration // restart time announced; 0: off
	Families        []Family      // default: IPv4 unicast, and IPv6 unicast
	// MaxPrefixes the router may send before the session is shut down
	// (merlin imports nothing; a router that floods it is misconfigured or
	// hostile). 0: 1000.
	MaxPrefixes uint32
	// MaxPrefixesRestart is how long a peer shut down for its prefix limit
	// stays down before merlin tries it again (FRR's `maximum-prefix N
	// restart`). 0: 1 minute.
	MaxPrefixesRestart time.Duration
	// BFD runs a single-hop BFD session with the router (nil: off): a
	// BFD Down takes the BGP session down at once instead of after the
	// hold time. Not with MultihopTTL.
	BFD *bfd.Config
	// Source says where the peer is configured (status only: "cluster
	// peer NAME", "node file"); a change of it alone moves no session.
	Source string
}

const (
	defaultHoldTime      = 90 * time.Second
	defaultConnectRetry  = 5 * time.Second
	defaultMaxPrefixes   = 1000
	defaultPrefixRestart = time.Minute
)

// on: BGP runs (a local AS is configured).
func (c Config) on() bool { return c.LocalAS != 0 }

// validateIfOn validates a configuration that turns BGP on; one without a
// local AS must have no peers either.
func (c Config) validateIfOn() error {
	if !c.on() && len(c.Peers) == 0 {
		return nil
	}
	return c.Validate()
}

// sameGlobal: the settings a running speaker cannot change live.
func (c Config) sameGlobal(o Config) bool {
	return c.LocalAS == o.LocalAS && c.RouterID == o.RouterID && c.ListenPort == o.ListenPort &&
		slices.Equal(c.ListenAddresses, o.ListenAddresses) && c.NextHopIPv6 == o.NextHopIPv6
}

// Validate checks the whole configuration and names the setting at fault.
func (c Config) Validate() error {
	if c.LocalAS == 0 {
		return errors.New("bgp.local_as: required (1 to 4294967295)")
	}
	if !c.RouterID.Is4() || !unicast(c.RouterID) {
		return fmt.Errorf("bgp.router_id %q: want a unicast IPv4 address (not 0.0.0.0, 255.255.255.255 or multicast)", c.RouterID)
	}
	if c.ListenPort < 0 || c.ListenPort > 65535 {
		return fmt.Errorf("bgp.listen_port %d: want 0 (do not listen) to 65535", c.ListenPort)
	}
	if c.NextHopIPv6.IsValid() && !c.NextHopIPv6.Is6() {
		return fmt.Errorf("bgp.next_hop_ipv6 %q: want an IPv6 address", c.NextHopIPv6)
	}
	seen := map[netip.Addr]bool{}
	for i, p := range c.Peers {
		if p.Address == c.RouterID {
			return fmt.Errorf("bgp.peers[%d].address %s: this node's own router id", i, p.Address)
		}
		if err := c.validatePeer(p); err != nil {
			return fmt.Errorf("bgp.peers[%d]: %w", i, err)
		}
		if seen[p.Address] {
			return fmt.Errorf("bgp.peers[%d].address %s: listed twice", i, p.Address)
		}
		seen[p.Address] = true
	}
	return nil
}

func (c Config) validatePeer(p Peer) error {
	if !p.Address.IsValid() || !unicast(p.Address) {
		return fmt.Errorf("address %q: want the router's unicast IP address (not unspecified, broadcast or multicast)", p.Address)
	}
	if p.AS == 0 {
		return errors.New("as: required")
	}
	if p.Port < 0 || p.Port > 65535 {
		return fmt.Errorf("port %d: want 1 to 65535", p.Port)
	}
	if p.Local.IsValid() && p.Local.Is4() != p.Address.Is4() {
		return fmt.Errorf("local_address %s: not the family of %s", p.Local, p.Address)
	}
	if len(p.Password) > 80 { // TCP_MD5SIG_MAXKEYLEN
		return fmt.Errorf("password: %d bytes, the kernel takes at most 80", len(p.Password))
	}
	hold := p.hold()
	if hold < 3*time.Second || hold > 65535*time.Second {
		return fmt.Errorf("hold_time %s: want 3s to 65535s (the OPEN carries 16 bits)", p.HoldTime)
	}
	if p.ConnectRetry < 0 || p.ConnectRetry > time.Hour {
		return fmt.Errorf("connect_retry %s: want 0 (the default, 5s) to 1h", p.ConnectRetry)
	}
	if p.HoldTime%time.Second != 0 || p.KeepaliveTime%time.Second != 0 || p.ConnectRetry%time.Second != 0 || p.GracefulRestart%time.Second != 0 {
		return errors.New("hold_time, keepalive_time, connect_retry and graceful_restart are whole seconds")
	}
	if p.KeepaliveTime < 0 || p.KeepaliveTime >= hold {
		return fmt.Errorf("keepalive_time %s: want less than the hold time %s", p.KeepaliveTime, hold)
	}
	if p.MultihopTTL < 0 || p.MultihopTTL > 255 {
		return fmt.Errorf("multihop_ttl %d: want 0 to 255", p.MultihopTTL)
	}
	if p.GracefulRestart < 0 || p.GracefulRestart > 4095*time.Second {
		return fmt.Errorf("graceful_restart %s: want 0 (off) to 4095s", p.GracefulRestart)
	}
	if p.MaxPrefixesRestart != 0 && (p.MaxPrefixesRestart < time.Second || p.MaxPrefixesRestart > 24*time.Hour) {
		return fmt.Errorf("max_prefixes_restart %s: want 1s to 24h (0: 1m)", p.MaxPrefixesRestart)
	}
	if p.BFD != nil {
		if err := p.BFD.Validate("bfd_"); err != nil {
			return err
		}
		if p.MultihopTTL > 0 {
			return fmt.Errorf("bfd: single-hop only (RFC 5881); not with multihop_ttl %d", p.MultihopTTL)
		}
	}
	for _, f := range p.Families {
		switch f {
		case IPv4Unicast:
		case IPv6Unicast:
			if p.Address.Is4() && !c.NextHopIPv6.IsValid() {
				return fmt.Errorf("families: %s over an IPv4 session needs bgp.next_hop_ipv6", f)
			}
		default:
			return fmt.Errorf("families %q: want %s or %s", f, IPv4Unicast, IPv6Unicast)
		}
	}
	return nil
}

// unicast: an address a router or a router id can have.
func unicast(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

func (p Peer) hold() time.Duration {
	if p.HoldTime == 0 {
		return defaultHoldTime
	}
	return p.HoldTime
}

// families: IPv4 unicast always by default; IPv6 unicast when the session
// is IPv6 or an IPv6 next hop is configured.
func (c Config) families(p Peer) []Family {
	if len(p.Families) > 0 {
		return p.Families
	}
	if p.Address.Is6() || c.NextHopIPv6.IsValid() {
		return []Family{IPv4Unicast, IPv6Unicast}
	}
	return []Family{IPv4Unicast}
}

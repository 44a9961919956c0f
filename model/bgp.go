package model

import (
	"net/netip"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/merlin-ipvs/merlin/types"
)

// BGP families a peer may carry.
var BGPFamilies = []string{"ipv4-unicast", "ipv6-unicast"}

// MaxBGPPeers bounds the cluster's BGP peers (each is a key and, on the
// nodes it selects, a session).
const MaxBGPPeers = 1024

// ValidateBGPPeer checks a cluster BGP peer and names the field at fault;
// the node checks the whole of its configuration again when it applies it.
func ValidateBGPPeer(p *types.BGPPeerConfig) error {
	if err := ValidateID("name", p.GetName()); err != nil {
		return err
	}
	a, err := netip.ParseAddr(p.GetAddress())
	if err != nil || a.Zone() != "" {
		return FieldErrorf("address", "%q: want the router's IP address", p.GetAddress())
	}
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return FieldErrorf("address", "%s: want a router's unicast address (not loopback, unspecified, broadcast or multicast)", a)
	}
	if p.GetAs() == 0 {
		return FieldErrorf("as", "required (1 to 4294967295)")
	}
	if err := ValidatePort("port", p.GetPort(), true); err != nil {
		return err
	}
	if l := p.GetLocalAddress(); l != "" {
		la, err := netip.ParseAddr(l)
		if err != nil || la.Is4() != a.Is4() {
			return FieldErrorf("local_address", "%q: want an address of the family of %s", l, a)
		}
	}
	if err := validateBGPPassword(p); err != nil {
		return err
	}
	if err := validateBGPTimers(p); err != nil {
		return err
	}
	if p.GetMultihopTtl() > 255 {
		return FieldErrorf("multihop_ttl", "%d: want 0 to 255", p.GetMultihopTtl())
	}
	for i, f := range p.GetFamilies() {
		if !slices.Contains(BGPFamilies, f) {
			return FieldErrorf("families", "[%d] %q: want ipv4-unicast or ipv6-unicast", i, f)
		}
	}
	if err := validateBGPBFD(p); err != nil {
		return err
	}
	return validateSelector(p)
}

func validateBGPPassword(p *types.BGPPeerConfig) error {
	if len(p.GetPassword()) > 80 { // TCP_MD5SIG_MAXKEYLEN; never quoted
		return FieldErrorf("password", "%d bytes, the kernel takes at most 80", len(p.GetPassword()))
	}
	if p.GetPassword() != "" && p.GetPasswordFile() != "" {
		return FieldErrorf("password_file", "given with password: one or the other")
	}
	if p.GetPasswordSet() {
		return FieldErrorf("password_set", "read-only: send password (or keep_password)")
	}
	if f := p.GetPasswordFile(); f != "" && (f[0] != '/' || len(f) > 200) {
		return FieldErrorf("password_file", "%q: want an absolute path on the nodes", f)
	}
	return nil
}

// durationField is a duration setting with its bounds (0 is always the
// default) and whether it is whole seconds.
type durationField struct {
	name     string
	d        *durationpb.Duration
	min, max time.Duration
	seconds  bool
}

func validateBGPTimers(p *types.BGPPeerConfig) error {
	fields := []durationField{
		{"hold_time", p.GetHoldTime(), 3 * time.Second, 65535 * time.Second, true},
		{"keepalive_time", p.GetKeepaliveTime(), time.Second, 21845 * time.Second, true},
		{"connect_retry", p.GetConnectRetry(), time.Second, time.Hour, true},
		{"graceful_restart", p.GetGracefulRestart(), time.Second, 4095 * time.Second, true},
		{"max_prefixes_restart", p.GetMaxPrefixesRestart(), time.Second, 24 * time.Hour, false},
		{"bfd_min_tx", p.GetBfdMinTx(), 10 * time.Millisecond, time.Minute, false},
		{"bfd_min_rx", p.GetBfdMinRx(), 10 * time.Millisecond, time.Minute, false},
	}
	for _, f := range fields {
		if err := f.check(); err != nil {
			return err
		}
	}
	if hold, keep := p.GetHoldTime().AsDuration(), p.GetKeepaliveTime().AsDuration(); hold > 0 && keep >= hold {
		return FieldErrorf("keepalive_time", "%s: want less than the hold time %s", keep, hold)
	}
	return nil
}

func (f durationField) check() error {
	if f.d == nil {
		return nil
	}
	d := f.d.AsDuration()
	if f.d.CheckValid() != nil || d < 0 || (d != 0 && (d < f.min || d > f.max)) {
		return FieldErrorf(f.name, "%s: want %s to %s (0: the default)", d, f.min, f.max)
	}
	if f.seconds && d%time.Second != 0 {
		return FieldErrorf(f.name, "%s: whole seconds", d)
	}
	if !f.seconds && d%time.Millisecond != 0 {
		return FieldErrorf(f.name, "%s: whole milliseconds", d)
	}
	return nil
}

func validateBGPBFD(p *types.BGPPeerConfig) error {
	if !p.GetBfd() {
		if p.GetBfdMinTx() != nil || p.GetBfdMinRx() != nil || p.GetBfdMultiplier() != 0 {
			return FieldErrorf("bfd", "off, with bfd_min_tx, bfd_min_rx or bfd_multiplier given: turn it on")
		}
		return nil
	}
	if m := p.GetBfdMultiplier(); m > 255 {
		return FieldErrorf("bfd_multiplier", "%d: want 1 to 255 (0: 3)", m)
	}
	if p.GetMultihopTtl() > 0 {
		return FieldErrorf("bfd", "single-hop only (RFC 5881): not with multihop_ttl")
	}
	return nil
}

func validateSelector(p *types.BGPPeerConfig) error {
	for i, n := range p.GetNodes() {
		if err := ValidateID("nodes", n); err != nil {
			return FieldErrorf("nodes", "[%d]: %s", i, err.(*FieldError).Reason)
		}
	}
	for k, v := range p.GetNodeLabels() {
		if err := ValidateLabel(k, v); err != nil {
			return err
		}
	}
	return nil
}

// ValidateLabel checks one node label (key=value): a key as an ID, a value
// of the same characters or empty.
func ValidateLabel(k, v string) error {
	if err := ValidateID("node_labels", k); err != nil {
		return err
	}
	if v != "" {
		if err := ValidateID("node_labels["+Truncate(k, 32)+"]", v); err != nil {
			return err
		}
	}
	return nil
}

// ValidateBGPSettings checks the cluster's BGP settings.
func ValidateBGPSettings(s *types.BGPSettings) error {
	if p := s.GetRouterIdPrefix(); p != "" {
		pfx, err := netip.ParsePrefix(p)
		if err != nil || !pfx.Addr().Is4() {
			return FieldErrorf("router_id_prefix", "%q: want an IPv4 prefix such as 198.18.0.0/24", p)
		}
	}
	if s.GetListenPort() > 65535 {
		return FieldErrorf("listen_port", "%d: want 1 to 65535 (0: each node's own)", s.GetListenPort())
	}
	return nil
}

// PeerSelects says whether a cluster peer applies to the node with this
// name and labels: every name list and label given must match.
func PeerSelects(p *types.BGPPeerConfig, node string, labels map[string]string) bool {
	if len(p.GetNodes()) > 0 && !slices.Contains(p.GetNodes(), node) {
		return false
	}
	for k, v := range p.GetNodeLabels() {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

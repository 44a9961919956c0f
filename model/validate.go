package model

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/merlin-ipvs/merlin/types"
)

// FieldError is a validation failure of one field, named by its path in the
// API message (for example "key.ip" or "config.weight").
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// FieldErrorf is a FieldError with a formatted reason. A string argument
// (a value quoted back) keeps at most its first 64 bytes.
func FieldErrorf(field, format string, args ...any) *FieldError {
	for i, a := range args {
		if s, ok := a.(string); ok {
			args[i] = Truncate(s, 64)
		}
	}
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Schedulers are the IPVS schedulers of Linux 6.1.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}

// DefaultPersistenceTimeout is ipvsadm's default for -p without a value.
const DefaultPersistenceTimeout = 300

// MaxWeight is the largest weight ipvsadm accepts.
const MaxWeight = 65535

// MaxPersistenceTimeout is the largest persistence timeout ipvsadm
// accepts (31 days).
const MaxPersistenceTimeout = 2678400

// Health-check timing bounds: no configuration turns a node into a
// connection flood, and none waits for hours.
const (
	MinCheckPeriod  = 100 * time.Millisecond
	MinCheckTimeout = 10 * time.Millisecond
	MaxCheckTiming  = time.Hour
	MaxThreshold    = 100
)

const maxIDLength = 63

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidateID checks a service ID: it is part of etcd keys, so no slashes.
func ValidateID(field, id string) error {
	switch {
	case id == "":
		return FieldErrorf(field, "required")
	case len(id) > maxIDLength:
		return FieldErrorf(field, "longer than %d characters", maxIDLength)
	case !idPattern.MatchString(id):
		return FieldErrorf(field, "%q: use letters, digits, '.', '_' and '-', starting with a letter or digit", id)
	}
	return nil
}

// flagOrder is the canonical order of service flags, and which scheduler a
// named flag belongs to ("" for any).
var flagOrder = []struct{ name, scheduler string }{
	{"persistent", ""}, {"one-packet", ""},
	{"flag-1", ""}, {"flag-2", ""}, {"flag-3", ""},
	{"sh-fallback", "sh"}, {"sh-port", "sh"},
	{"mh-fallback", "mh"}, {"mh-port", "mh"},
}

// CanonicalFlag is the canonical name of a service flag ("ops" → "one-packet").
func CanonicalFlag(name string) string {
	switch n := strings.ToLower(strings.TrimSpace(name)); n {
	case "ops", "onepacket":
		return "one-packet"
	default:
		return n
	}
}

func flagScheduler(name string) (string, bool) {
	for _, f := range flagOrder {
		if f.name == name {
			return f.scheduler, true
		}
	}
	return "", false
}

// NormalizeService validates a service and returns it in canonical form
// (canonical addresses, family filled in, flags deduplicated and ordered,
// persistence and one-packet consistent between flags and fields). The
// input is not modified. The revision is kept as given.
func NormalizeService(in *types.VirtualService) (*types.VirtualService, error) {
	if in == nil {
		return nil, FieldErrorf("service", "required")
	}
	if err := CheckSizes(in); err != nil {
		return nil, err
	}
	s := proto.Clone(in).(*types.VirtualService)
	if err := ValidateID("id", s.Id); err != nil {
		return nil, err
	}
	if s.Key == nil {
		return nil, FieldErrorf("key", "required")
	}
	family, err := normalizeServiceKey(s.Key)
	if err != nil {
		return nil, err
	}
	if s.Config == nil {
		return nil, FieldErrorf("config", "required")
	}
	if err := normalizeServiceConfig(s.Config, family); err != nil {
		return nil, err
	}
	if d := s.Defaults; d != nil {
		if _, ok := types.ForwardMethod_name[int32(d.Forward)]; !ok {
			return nil, FieldErrorf("defaults.forward", "unknown forward method %d", d.Forward)
		}
		if d.HealthCheck != nil {
			if err := validateHealthCheck("defaults.health_check", d.HealthCheck, true); err != nil {
				return nil, err
			}
			if d.HealthCheck.GetThroughVip().GetValue() && (s.GetKey().GetFwmark() != 0 || d.Forward == types.ForwardMethod_MASQ) {
				return nil, FieldErrorf("defaults.health_check.through_vip", "needs a VIP and servers reached by direct routing or a tunnel (not a firewall-mark service, not NAT)")
			}
		}
		if d.Forward == types.ForwardMethod_UNSET_FORWARD_METHOD && d.HealthCheck == nil {
			s.Defaults = nil
		}
	}
	if s.PassiveHealth, err = normalizePassive(s.PassiveHealth); err != nil {
		return nil, err
	}
	if s.Announce, err = normalizeAnnounce(s.Announce); err != nil {
		return nil, err
	}
	if s.HealthyThreshold, err = normalizeThreshold(s.HealthyThreshold, s.GetKey().GetFwmark() != 0); err != nil {
		return nil, err
	}
	return s, nil
}

func normalizeServiceKey(k *types.VirtualService_Key) (types.AddressFamily, error) {
	if k.Fwmark != 0 {
		if k.Ip != "" || k.Port != 0 || k.Protocol != types.Protocol_UNSET_PROTOCOL {
			return 0, FieldErrorf("key.fwmark", "a firewall-mark service has no ip, port or protocol")
		}
		switch k.Family {
		case types.AddressFamily_UNSET_FAMILY:
			k.Family = types.AddressFamily_IPV4
		case types.AddressFamily_IPV4, types.AddressFamily_IPV6:
		default:
			return 0, FieldErrorf("key.family", "unknown address family %d", k.Family)
		}
		return k.Family, nil
	}
	if k.Ip == "" {
		return 0, FieldErrorf("key.ip", "required (or set key.fwmark)")
	}
	addr, err := ParseAddr(k.Ip)
	if err != nil {
		return 0, FieldErrorf("key.ip", "%v", err)
	}
	if addr.IsLoopback() || addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || addr.IsLinkLocalUnicast() {
		return 0, FieldErrorf("key.ip", "%s cannot be a VIP (loopback, broadcast or link-local)", addr)
	}
	family := familyOf(addr)
	if k.Family != types.AddressFamily_UNSET_FAMILY && k.Family != family {
		return 0, FieldErrorf("key.family", "%s does not match address %s", k.Family, addr)
	}
	k.Ip, k.Family = addr.String(), family
	if err := ValidatePort("key.port", k.Port, false); err != nil {
		return 0, err
	}
	switch k.Protocol {
	case types.Protocol_TCP, types.Protocol_UDP, types.Protocol_SCTP:
	case types.Protocol_UNSET_PROTOCOL:
		return 0, FieldErrorf("key.protocol", "required (tcp, udp or sctp)")
	default:
		return 0, FieldErrorf("key.protocol", "unknown protocol %d", k.Protocol)
	}
	return family, nil
}

func normalizeServiceConfig(c *types.VirtualService_Config, family types.AddressFamily) error {
	c.Scheduler = strings.ToLower(strings.TrimSpace(c.Scheduler))
	if c.Scheduler == "" {
		return FieldErrorf("config.scheduler", "required")
	}
	if !slices.Contains(Schedulers, c.Scheduler) {
		return FieldErrorf("config.scheduler", "unknown scheduler %q (want one of %s)", c.Scheduler, strings.Join(Schedulers, ", "))
	}
	seen := map[string]bool{}
	for _, f := range c.Flags {
		name := CanonicalFlag(f)
		sched, ok := flagScheduler(name)
		if !ok {
			return FieldErrorf("config.flags", "unknown flag %q", f)
		}
		if sched != "" && sched != c.Scheduler {
			return FieldErrorf("config.flags", "flag %q belongs to scheduler %s, not %s", name, sched, c.Scheduler)
		}
		seen[name] = true
	}
	// sh-port and mh-port name the same kernel bit as flag-2; keep one name.
	for named, generic := range map[string]string{"sh-fallback": "flag-1", "sh-port": "flag-2", "mh-fallback": "flag-1", "mh-port": "flag-2"} {
		if seen[named] {
			delete(seen, generic)
		}
	}
	if t := c.PersistenceTimeout; t != nil && t.Value > MaxPersistenceTimeout {
		return FieldErrorf("config.persistence_timeout", "%d s is above %d s (31 days, ipvsadm's limit)", t.Value, MaxPersistenceTimeout)
	}
	if t := c.PersistenceTimeout; t != nil && t.Value > 0 {
		seen["persistent"] = true
	} else if seen["persistent"] {
		c.PersistenceTimeout = wrapperspb.UInt32(DefaultPersistenceTimeout)
	}
	if !seen["persistent"] {
		c.PersistenceTimeout = nil
	}
	if c.OnePacket.GetValue() {
		seen["one-packet"] = true
	}
	if seen["one-packet"] {
		c.OnePacket = wrapperspb.Bool(true)
	} else {
		c.OnePacket = nil
	}
	c.Flags = c.Flags[:0]
	for _, f := range flagOrder {
		if seen[f.name] {
			c.Flags = append(c.Flags, f.name)
		}
	}
	if len(c.Flags) == 0 {
		c.Flags = nil
	}
	if m := c.PersistenceNetmask; m != nil {
		if !seen["persistent"] {
			return FieldErrorf("config.persistence_netmask", "needs persistence (config.persistence_timeout)")
		}
		bits := uint32(32)
		if family == types.AddressFamily_IPV6 {
			bits = 128
		}
		if m.Value == 0 || m.Value > bits {
			return FieldErrorf("config.persistence_netmask", "%d is not a prefix length from 1 to %d", m.Value, bits)
		}
	}
	if e := c.PersistenceEngine; e != "" && e != "sip" {
		return FieldErrorf("config.persistence_engine", "unknown engine %q (want sip)", e)
	}
	return nil
}

// NormalizeServer validates a server against the service it belongs to and
// returns it in canonical form (canonical address, weight 1 when unset).
func NormalizeServer(in *types.RealServer, svc *types.VirtualService) (*types.RealServer, error) {
	if in == nil {
		return nil, FieldErrorf("server", "required")
	}
	if err := CheckSizes(in); err != nil {
		return nil, err
	}
	s := proto.Clone(in).(*types.RealServer)
	if err := ValidateID("serviceID", s.ServiceID); err != nil {
		return nil, err
	}
	if s.Key == nil {
		return nil, FieldErrorf("key", "required")
	}
	if s.Key.Ip == "" {
		return nil, FieldErrorf("key.ip", "required")
	}
	addr, err := ParseAddr(s.Key.Ip)
	if err != nil {
		return nil, FieldErrorf("key.ip", "%v", err)
	}
	s.Key.Ip = addr.String()
	fwmark := svc.GetKey().GetFwmark() != 0
	if err := ValidatePort("key.port", s.Key.Port, fwmark); err != nil {
		return nil, err
	}
	if IsSorryServer(svc, s.Key) {
		return nil, FieldErrorf("key", "%s is the service's sorry server (healthy_threshold.sorry_servers): it cannot be a member too", ServerKeyString(s.Key))
	}
	if s.Config == nil {
		s.Config = &types.RealServer_Config{}
	}
	c := s.Config
	if c.Weight == nil {
		c.Weight = wrapperspb.UInt32(1)
	} else if c.Weight.Value > MaxWeight {
		return nil, FieldErrorf("config.weight", "%d is above %d", c.Weight.Value, MaxWeight)
	}
	if _, ok := types.ForwardMethod_name[int32(c.Forward)]; !ok {
		return nil, FieldErrorf("config.forward", "unknown forward method %d", c.Forward)
	}
	forward := EffectiveForward(s, svc)
	if forward == types.ForwardMethod_UNSET_FORWARD_METHOD {
		return nil, FieldErrorf("config.forward", "required (%s), here or in the service's defaults.forward", ForwardNames)
	}
	if svcFamily := svc.GetKey().GetFamily(); svcFamily != familyOf(addr) && forward != types.ForwardMethod_TUNNEL {
		return nil, FieldErrorf("key.ip", "%s server %s cannot serve a %s service with %s forwarding (only tunnel mixes families)",
			familyOf(addr), addr, svcFamily, ForwardName(forward))
	}
	if c.LowerThreshold != nil && c.UpperThreshold != nil && c.UpperThreshold.Value != 0 && c.LowerThreshold.Value > c.UpperThreshold.Value {
		return nil, FieldErrorf("config.lower_threshold", "%d is above config.upper_threshold %d", c.LowerThreshold.Value, c.UpperThreshold.Value)
	}
	if err := validateTunnel(c, forward); err != nil {
		return nil, err
	}
	if s.HealthCheck != nil {
		if err := validateHealthCheck("health_check", s.HealthCheck, true); err != nil {
			return nil, err
		}
	}
	eff := EffectiveHealthCheck(s, svc)
	if err := validateHealthCheck("health_check", eff, false); err != nil {
		return nil, err
	}
	if err := validateThroughVIP(eff, forward, svc); err != nil {
		return nil, err
	}
	return s, nil
}

// validateThroughVIP: a check through the VIP needs a VIP, and a server
// reached by direct routing or a tunnel.
func validateThroughVIP(h *types.RealServer_HealthCheck, forward types.ForwardMethod, svc *types.VirtualService) error {
	if !h.GetThroughVip().GetValue() || h.GetEndpoint().GetValue() == "" {
		return nil
	}
	switch {
	case svc.GetKey().GetFwmark() != 0:
		return FieldErrorf("health_check.through_vip", "a firewall-mark service has no VIP to check through")
	case forward == types.ForwardMethod_MASQ:
		return FieldErrorf("health_check.through_vip", "a NAT (masq) server is checked at its own address: its replies come back through the node either way")
	}
	if u, err := url.Parse(h.GetEndpoint().GetValue()); err == nil && (u.Scheme == "exec" || u.Hostname() != "") {
		return FieldErrorf("health_check.through_vip", "not with an exec check or an endpoint naming a host (%s)", Truncate(h.GetEndpoint().GetValue(), 40))
	}
	return nil
}

func validateTunnel(c *types.RealServer_Config, forward types.ForwardMethod) error {
	if forward != types.ForwardMethod_TUNNEL {
		switch {
		case c.TunnelType != types.TunnelType_IPIP:
			return FieldErrorf("config.tunnel_type", "only for tunnel forwarding")
		case c.TunnelPort != 0:
			return FieldErrorf("config.tunnel_port", "only for tunnel forwarding")
		case c.TunnelChecksum || c.TunnelRemoteChecksum:
			return FieldErrorf("config.tunnel_checksum", "only for tunnel forwarding")
		}
		return nil
	}
	switch c.TunnelType {
	case types.TunnelType_GUE:
		if err := ValidatePort("config.tunnel_port", c.TunnelPort, false); err != nil {
			return err
		}
	case types.TunnelType_IPIP, types.TunnelType_GRE:
		if c.TunnelPort != 0 {
			return FieldErrorf("config.tunnel_port", "only for GUE tunnels")
		}
		if c.TunnelType == types.TunnelType_IPIP && (c.TunnelChecksum || c.TunnelRemoteChecksum) {
			return FieldErrorf("config.tunnel_checksum", "only for GUE and GRE tunnels")
		}
	default:
		return FieldErrorf("config.tunnel_type", "unknown tunnel type %d", c.TunnelType)
	}
	return nil
}

// HealthCheckSchemes are the endpoint schemes merlin accepts.
var HealthCheckSchemes = []string{"http", "https", "tcp", "udp", "grpc", "exec"}

// validateHealthCheck checks the fields that are set; unless partial (a
// server's effective check), an endpoint also needs every timing field.
func validateHealthCheck(field string, h *types.RealServer_HealthCheck, partial bool) error {
	if h == nil {
		return nil
	}
	if ep := h.Endpoint.GetValue(); ep != "" {
		u, err := url.Parse(ep)
		if err != nil {
			return FieldErrorf(field+".endpoint", "not a URL: %v", err)
		}
		if !slices.Contains(HealthCheckSchemes, u.Scheme) {
			return FieldErrorf(field+".endpoint", "scheme %q not supported (want %s)", u.Scheme, strings.Join(HealthCheckSchemes, ", "))
		}
		if u.Scheme == "exec" {
			if h.Command == "" && !partial {
				return FieldErrorf(field+".command", "required with an exec: endpoint")
			}
		} else {
			if host := u.Hostname(); host != "" {
				if _, err := netip.ParseAddr(host); err != nil {
					return FieldErrorf(field+".endpoint", "host %q must be an IP address or empty (the server's own)", host)
				}
			}
			if p := u.Port(); p != "" {
				if port, err := strconv.ParseUint(p, 10, 16); err != nil || port == 0 {
					return FieldErrorf(field+".endpoint", "port %q: want 1 to 65535", p)
				}
			} else if !partial {
				// No port: the server's own, unless that is 0 (firewall-mark services).
				return FieldErrorf(field+".endpoint", "needs a port, e.g. http://:8080/health")
			}
		}
	}
	if h.ExpectStatus != "" {
		if err := ValidStatusSpec(h.ExpectStatus); err != nil {
			return FieldErrorf(field+".expect_status", "%v", err)
		}
	}
	if strings.ContainsFunc(h.Host, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return FieldErrorf(field+".host", "%q has spaces or control characters", h.Host)
	}
	if m := h.Method; m != "" && !validMethod(m) {
		return FieldErrorf(field+".method", "%q is not an HTTP method", m)
	}
	if s := h.SlowStart; s != nil {
		if err := s.CheckValid(); err != nil || s.AsDuration() < 0 {
			return FieldErrorf(field+".slow_start", "must not be negative")
		}
	}
	if _, ok := types.RealServer_Startup_name[int32(h.Startup)]; !ok {
		return FieldErrorf(field+".startup", "unknown startup state %d", h.Startup)
	}
	if p := h.Period; p != nil {
		if err := p.CheckValid(); err != nil || p.AsDuration() < MinCheckPeriod || p.AsDuration() > MaxCheckTiming {
			return FieldErrorf(field+".period", "%s: want %s to %s", p.AsDuration(), MinCheckPeriod, MaxCheckTiming)
		}
	}
	if t := h.Timeout; t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() < MinCheckTimeout || t.AsDuration() > MaxCheckTiming {
			return FieldErrorf(field+".timeout", "%s: want %s to %s", t.AsDuration(), MinCheckTimeout, MaxCheckTiming)
		}
	}
	if h.UpThreshold > MaxThreshold || h.DownThreshold > MaxThreshold {
		return FieldErrorf(field+".up_threshold", "up %d, down %d: at most %d", h.UpThreshold, h.DownThreshold, MaxThreshold)
	}
	// A timeout longer than the period is allowed, as in the original
	// Merlin: a check's next probe waits for the one before it.
	if partial || h.Endpoint.GetValue() == "" {
		return nil
	}
	switch {
	case h.Period == nil:
		return FieldErrorf(field+".period", "required with an endpoint")
	case h.Timeout == nil:
		return FieldErrorf(field+".timeout", "required with an endpoint")
	case h.UpThreshold == 0:
		return FieldErrorf(field+".up_threshold", "must be at least 1")
	case h.DownThreshold == 0:
		return FieldErrorf(field+".down_threshold", "must be at least 1")
	}
	return nil
}

func validMethod(m string) bool {
	for _, r := range m {
		if r < 'A' || r > 'Z' {
			return false
		}
	}
	return len(m) <= 16
}

// ValidatePort checks a port; zeroOK where the port may be absent
// (firewall-mark services).
func ValidatePort(field string, port uint32, zeroOK bool) error {
	if port == 0 && !zeroOK {
		return FieldErrorf(field, "required (1 to 65535)")
	}
	if port > 65535 {
		return FieldErrorf(field, "%d is above 65535", port)
	}
	return nil
}

// ParseAddr parses a service or server address: no zones, IPv4-mapped
// addresses unmapped, never unspecified or multicast.
func ParseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q: zones are not allowed", s)
	}
	a = a.Unmap()
	if a.IsUnspecified() || a.IsMulticast() {
		return netip.Addr{}, fmt.Errorf("%s cannot be a service or server address", a)
	}
	return a, nil
}

func familyOf(a netip.Addr) types.AddressFamily {
	if a.Is4() {
		return types.AddressFamily_IPV4
	}
	return types.AddressFamily_IPV6
}

// ValidStatusSpec checks an expected-status value: comma-separated HTTP
// codes and ranges, e.g. "200,204,300-399".
func ValidStatusSpec(spec string) error {
	for _, part := range strings.Split(spec, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		l, err := strconv.Atoi(lo)
		if err != nil || l < 100 || l > 599 {
			return fmt.Errorf("%q is not a status code or range like 200-299", part)
		}
		if isRange {
			h, err := strconv.Atoi(hi)
			if err != nil || h < l || h > 599 {
				return fmt.Errorf("%q is not a status range like 200-299", part)
			}
		}
	}
	return nil
}

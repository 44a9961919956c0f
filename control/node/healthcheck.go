package node

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/merlin-ipvs/merlin/health"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// HealthCheckOf is the check a node runs for a server: its effective
// check (service defaults with the server's own fields over them). ok is
// false when the server is not checked.
func HealthCheckOf(srv *types.RealServer, svc *types.VirtualService) (c health.Check, ok bool, err error) {
	h := model.EffectiveHealthCheck(srv, svc)
	ep := h.GetEndpoint().GetValue()
	if ep == "" {
		return health.Check{}, false, nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return health.Check{}, false, fmt.Errorf("health_check.endpoint: %w", err)
	}
	addr, err := netip.ParseAddr(srv.GetKey().GetIp())
	if err != nil {
		return health.Check{}, false, fmt.Errorf("key.ip: %w", err)
	}
	if host := u.Hostname(); host != "" {
		if addr, err = netip.ParseAddr(host); err != nil {
			return health.Check{}, false, fmt.Errorf("health_check.endpoint: host %q: %w", host, err)
		}
	}
	port := uint64(srv.GetKey().GetPort())
	if p := u.Port(); p != "" {
		if port, err = strconv.ParseUint(p, 10, 16); err != nil {
			return health.Check{}, false, fmt.Errorf("health_check.endpoint: port %q", p)
		}
	}
	spec := health.ProbeSpec{
		Method:       strings.ToUpper(h.GetMethod()),
		Path:         u.RequestURI(),
		Host:         h.GetHost(),
		ExpectStatus: h.GetExpectStatus(),
		ExpectBody:   h.GetExpectBody(),
		TLSVerify:    h.GetTlsVerify(),
		TLSName:      h.GetTlsServerName(),
		GRPCService:  h.GetGrpcService(),
		UDPSend:      h.GetUdpSend(),
		UDPExpect:    h.GetUdpExpect(),
		Command:      h.GetCommand(),
	}
	kind := health.Kind(u.Scheme)
	if kind != health.HTTP && kind != health.HTTPS {
		spec.Path, spec.Method, spec.Host, spec.ExpectStatus, spec.ExpectBody = "", "", "", "", ""
	}
	if kind != health.Exec {
		spec.Command = ""
	}
	c = health.Check{
		Kind:     kind,
		Target:   netip.AddrPortFrom(addr, uint16(port)),
		Probe:    health.ProbeOf(spec),
		Interval: h.GetPeriod().AsDuration(),
		Timeout:  h.GetTimeout().AsDuration(),
		Rise:     int(h.GetUpThreshold()),
		Fall:     int(h.GetDownThreshold()),
	}
	if h.GetThroughVip().GetValue() {
		vip, err := netip.ParseAddr(svc.GetKey().GetIp())
		if err != nil {
			return health.Check{}, false, fmt.Errorf("health_check.through_vip: service key.ip: %w", err)
		}
		if u.Port() == "" {
			port = uint64(svc.GetKey().GetPort())
		}
		c.Via, c.Target = c.Target.Addr(), netip.AddrPortFrom(vip, uint16(port))
		c.Mark = PathMark(svc.GetId(), model.ServerKeyString(srv.GetKey()))
	}
	return c, true, nil
}

// Marks of the private IPVS services that checks through the VIP go by:
// 0x40000000 to 0x7fffffff, far from an operator's own firewall marks
// (small numbers), and below 2^31, which ipvsadm would print negative.
const (
	pathMarkBit  = 1 << 30
	pathMarkMask = pathMarkBit - 1
)

// PathMark is the mark of a server's check through the VIP: a hash of the
// service and server, the same on every node and across restarts. Two
// servers whose marks meet (about 1 in 2,000 for 1,000 checked servers)
// are both failed safe by the probe sink, never probed through each other.
func PathMark(serviceID, server string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(serviceID + "/" + server))
	return pathMarkBit | h.Sum32()&pathMarkMask
}

// IsPathMark: a firewall mark in the range of the checks through the VIP.
func IsPathMark(m uint32) bool { return m>>30 == 1 }

package node

import (
	"fmt"
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
	c = health.Check{
		Kind:         health.Kind(u.Scheme),
		Target:       netip.AddrPortFrom(addr, uint16(port)),
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
		Interval:     h.GetPeriod().AsDuration(),
		Timeout:      h.GetTimeout().AsDuration(),
		Rise:         int(h.GetUpThreshold()),
		Fall:         int(h.GetDownThreshold()),
	}
	if c.Kind != health.HTTP && c.Kind != health.HTTPS {
		c.Path, c.Method, c.Host, c.ExpectStatus, c.ExpectBody = "", "", "", "", ""
	}
	if c.Kind != health.Exec {
		c.Command = ""
	}
	return c, true, nil
}

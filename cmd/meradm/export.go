package main

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

func exportCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "export [-f FILE]",
		Short: "Write every service and server in the declarative format apply reads (a backup)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.client(func(ctx context.Context, c types.MerlinClient) error {
				list, err := listAll(ctx, c)
				if err != nil {
					return err
				}
				out, err := yaml.Marshal(toFile(list))
				if err != nil {
					return err
				}
				if file == "" || file == "-" {
					_, err = g.out.Write(out)
					return err
				}
				return os.WriteFile(file, out, 0o644)
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "write to this file (default: standard output)")
	return cmd
}

// toFile is the declarative form of a List: what readFile reads back into
// the same objects.
func toFile(list *types.ListResponse) fileSpec {
	spec := fileSpec{Services: []fileService{}}
	for _, item := range list.Items {
		fs := serviceToFile(item.Service)
		for _, srv := range item.Servers {
			fs.Servers = append(fs.Servers, serverToFile(srv))
		}
		spec.Services = append(spec.Services, fs)
	}
	return spec
}

func serviceToFile(svc *types.VirtualService) fileService {
	k, c := svc.GetKey(), svc.GetConfig()
	fs := fileService{ID: svc.Id, Scheduler: c.GetScheduler(), PersistenceEngine: c.GetPersistenceEngine(), OnePacket: c.GetOnePacket().GetValue()}
	if k.GetFwmark() != 0 {
		fs.Fwmark = k.Fwmark
		if k.GetFamily() == types.AddressFamily_IPV6 {
			fs.Family = "ipv6"
		}
	} else {
		addr, _ := netip.ParseAddr(k.GetIp())
		fs.Protocol, fs.Address = strings.ToLower(k.GetProtocol().String()), netip.AddrPortFrom(addr, uint16(k.GetPort())).String()
	}
	// persistent and one-packet have fields of their own in the file.
	for _, f := range c.GetFlags() {
		if f != "persistent" && f != "one-packet" {
			fs.Flags = append(fs.Flags, f)
		}
	}
	fs.Persistence = uint32Of(c.GetPersistenceTimeout() != nil, c.GetPersistenceTimeout().GetValue())
	fs.PersistenceNetmask = uint32Of(c.GetPersistenceNetmask() != nil, c.GetPersistenceNetmask().GetValue())
	fs.Forward = model.ForwardName(svc.GetDefaults().GetForward())
	fs.HealthCheck = healthToFile(svc.GetDefaults().GetHealthCheck())
	if a := svc.GetAnnounce(); a != nil && proto.Size(a) > 0 {
		fs.Announce = &fileAnnounce{Always: a.Always, Communities: a.Communities, LargeCommunities: a.LargeCommunities,
			LocalPreference: uint32Of(a.LocalPreference != nil, a.GetLocalPreference().GetValue())}
		if lb := a.GetLinkBandwidth(); lb != nil {
			fs.Announce.LinkBandwidth = &lb.Value
		}
	}
	fs.PassiveHealth = passiveToFile(svc.GetPassiveHealth())
	fs.HealthyThreshold = thresholdToFile(svc.GetHealthyThreshold())
	return fs
}

func passiveToFile(p *types.PassiveHealth) *filePassive {
	if p == nil || proto.Size(p) == 0 {
		return nil
	}
	out := &filePassive{MinAttempts: uint32Of(p.MinAttempts != nil, p.GetMinAttempts().GetValue()),
		MaxFailedPercent: uint32Of(p.MaxFailedPercent != nil, p.GetMaxFailedPercent().GetValue())}
	if p.Enabled != nil {
		v := p.Enabled.Value
		out.Enabled = &v
	}
	if p.Window != nil {
		out.Window = p.Window.AsDuration().String()
	}
	return out
}

func serverToFile(srv *types.RealServer) fileServer {
	c := srv.GetConfig()
	fs := fileServer{Address: model.ServerKeyString(srv.Key), Forward: model.ForwardName(c.GetForward()),
		Weight:         uint32Of(c.GetWeight() != nil, c.GetWeight().GetValue()),
		UpperThreshold: uint32Of(c.GetUpperThreshold() != nil, c.GetUpperThreshold().GetValue()),
		LowerThreshold: uint32Of(c.GetLowerThreshold() != nil, c.GetLowerThreshold().GetValue()),
		HealthCheck:    healthToFile(srv.GetHealthCheck())}
	if c.GetTunnelType() != types.TunnelType_IPIP || c.GetTunnelPort() != 0 || c.GetTunnelChecksum() || c.GetTunnelRemoteChecksum() {
		fs.Tunnel = &fileTunnel{Type: strings.ToLower(c.GetTunnelType().String()), Port: c.GetTunnelPort(), Checksum: c.GetTunnelChecksum(), RemoteChecksum: c.GetTunnelRemoteChecksum()}
	}
	return fs
}

// healthToFile: nil for no check (and for the empty message the API
// returns for a server without one).
func healthToFile(h *types.RealServer_HealthCheck) *fileHealth {
	if h == nil || proto.Size(h) == 0 {
		return nil
	}
	fh := &fileHealth{Up: h.UpThreshold, Down: h.DownThreshold, Method: h.Method, Host: h.Host, ExpectStatus: h.ExpectStatus,
		ExpectBody: h.ExpectBody, TLSServerName: h.TlsServerName, TLSVerify: h.TlsVerify, UDPSend: h.UdpSend, UDPExpect: h.UdpExpect,
		Command: h.Command, GRPCService: h.GrpcService}
	if h.Endpoint != nil {
		ep := h.Endpoint.Value
		fh.Endpoint = &ep
	}
	for _, d := range []struct {
		set bool
		in  interface{ AsDuration() time.Duration }
		out *string
	}{{h.Period != nil, h.Period, &fh.Period}, {h.Timeout != nil, h.Timeout, &fh.Timeout}, {h.SlowStart != nil, h.SlowStart, &fh.SlowStart}} {
		if d.set {
			*d.out = d.in.AsDuration().String()
		}
	}
	if h.Startup == types.RealServer_DOWN {
		fh.Startup = "down"
	}
	if v := h.GetThroughVip(); v != nil {
		fh.ThroughVIP = &v.Value
	}
	return fh
}

func uint32Of(set bool, v uint32) *uint32 {
	if !set {
		return nil
	}
	return &v
}

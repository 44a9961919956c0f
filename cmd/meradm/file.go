package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// The declarative file: every service with its servers.
type fileSpec struct {
	Services []fileService `json:"services"`
}

type fileService struct {
	ID                 string         `json:"id"`
	Protocol           string         `json:"protocol,omitempty"` // tcp, udp, sctp
	Address            string         `json:"address,omitempty"`  // VIP:PORT, [IPv6]:PORT
	Fwmark             uint32         `json:"fwmark,omitempty"`
	Family             string         `json:"family,omitempty"` // of a fwmark service: ipv4 (default), ipv6
	Scheduler          string         `json:"scheduler"`
	Flags              []string       `json:"flags,omitempty"`
	Persistence        *uint32        `json:"persistence,omitempty"` // timeout in seconds
	PersistenceNetmask *uint32        `json:"persistence_netmask,omitempty"`
	OnePacket          bool           `json:"one_packet,omitempty"`
	PersistenceEngine  string         `json:"persistence_engine,omitempty"`
	Forward            string         `json:"forward,omitempty"`      // default of its servers
	HealthCheck        *fileHealth    `json:"health_check,omitempty"` // default of its servers
	Announce           *fileAnnounce  `json:"announce,omitempty"`
	PassiveHealth      *filePassive   `json:"passive_health,omitempty"`
	HealthyThreshold   *fileThreshold `json:"healthy_threshold,omitempty"`
	Servers            []fileServer   `json:"servers,omitempty"`
}

// fileAnnounce is how BGP announces the service's VIP.
type fileAnnounce struct {
	Always           bool     `json:"always,omitempty"`
	Communities      []string `json:"communities,omitempty"`
	LargeCommunities []string `json:"large_communities,omitempty"`
	LocalPreference  *uint32  `json:"local_preference,omitempty"`
	// LinkBandwidth: unset takes the cluster's default.
	LinkBandwidth *bool `json:"link_bandwidth,omitempty"`
}

// filePassive is passive health for the service's NAT servers.
type filePassive struct {
	Enabled          *bool   `json:"enabled,omitempty"`
	Window           string  `json:"window,omitempty"`
	MinAttempts      *uint32 `json:"min_attempts,omitempty"`
	MaxFailedPercent *uint32 `json:"max_failed_percent,omitempty"`
}

type fileServer struct {
	Address        string      `json:"address"`
	Weight         *uint32     `json:"weight,omitempty"` // default 1
	Forward        string      `json:"forward,omitempty"`
	UpperThreshold *uint32     `json:"upper_threshold,omitempty"`
	LowerThreshold *uint32     `json:"lower_threshold,omitempty"`
	Tunnel         *fileTunnel `json:"tunnel,omitempty"`
	HealthCheck    *fileHealth `json:"health_check,omitempty"`
}

type fileTunnel struct {
	Type           string `json:"type,omitempty"` // ipip, gue, gre
	Port           uint32 `json:"port,omitempty"`
	Checksum       bool   `json:"checksum,omitempty"`
	RemoteChecksum bool   `json:"remote_checksum,omitempty"`
}

type fileHealth struct {
	Endpoint      *string `json:"endpoint,omitempty"` // http://:8080/health, https://, tcp://:PORT, udp://:PORT, grpc://:PORT, exec:
	Period        string  `json:"period,omitempty"`
	Timeout       string  `json:"timeout,omitempty"`
	Up            uint32  `json:"up,omitempty"`
	Down          uint32  `json:"down,omitempty"`
	Method        string  `json:"method,omitempty"`
	Host          string  `json:"host,omitempty"`
	ExpectStatus  string  `json:"expect_status,omitempty"`
	ExpectBody    string  `json:"expect_body,omitempty"`
	TLSServerName string  `json:"tls_server_name,omitempty"`
	TLSVerify     bool    `json:"tls_verify,omitempty"`
	UDPSend       string  `json:"udp_send,omitempty"`
	UDPExpect     string  `json:"udp_expect,omitempty"`
	Command       string  `json:"command,omitempty"`
	GRPCService   string  `json:"grpc_service,omitempty"`
	SlowStart     string  `json:"slow_start,omitempty"`
	Startup       string  `json:"startup,omitempty"` // kernel (default) or down
	ThroughVIP    *bool   `json:"through_vip,omitempty"`
}

// desiredItem is one service of the file in canonical form.
type desiredItem struct {
	service *types.VirtualService
	servers map[string]*types.RealServer
}

// readFile parses and validates a declarative file; errors name the entry
// and the field.
func readFile(path string) (map[string]*desiredItem, error) {
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	var spec fileSpec
	if err := yaml.UnmarshalStrict(raw, &spec); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]*desiredItem{}
	vips := map[string]string{}
	var errs []error
	for i, fs := range spec.Services {
		where := fmt.Sprintf("%s: services[%d]", path, i)
		if fs.ID != "" {
			where += " (" + fs.ID + ")"
		}
		item, err := readService(fs, where, out, vips)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[item.service.Id] = item
	}
	if len(errs) > 0 {
		if len(errs) > maxReported {
			errs = append(errs[:maxReported], fmt.Errorf("… and %d more", len(errs)-maxReported))
		}
		return nil, errors.Join(errs...) // every problem at once
	}
	return out, nil
}

// maxReported bounds the problems a bad file reports at once.
const maxReported = 20

// readService validates one service of the file and its servers.
func readService(fs fileService, where string, seen map[string]*desiredItem, vips map[string]string) (*desiredItem, error) {
	svc, err := fs.toProto()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	svc, err = model.NormalizeService(svc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if seen[svc.Id] != nil {
		return nil, fmt.Errorf("%s: id: %q appears twice", where, svc.Id)
	}
	vip := model.VIPKey(svc.Key)
	if other, ok := vips[vip]; ok {
		return nil, fmt.Errorf("%s: address: %s is also claimed by service %q", where, vip, other)
	}
	vips[vip] = svc.Id
	item := &desiredItem{service: svc, servers: map[string]*types.RealServer{}}
	var errs []error
	for j, fsrv := range fs.Servers {
		swhere := fmt.Sprintf("%s.servers[%d]", where, j)
		srv, err := fsrv.toProto(svc.Id)
		if err == nil {
			srv, err = model.NormalizeServer(srv, svc)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", swhere, err))
			continue
		}
		k := model.ServerKeyString(srv.Key)
		if item.servers[k] != nil {
			errs = append(errs, fmt.Errorf("%s: address: %s appears twice", swhere, k))
			continue
		}
		item.servers[k] = srv
	}
	return item, errors.Join(errs...)
}

func (fs *fileService) toProto() (*types.VirtualService, error) {
	svc := &types.VirtualService{Id: fs.ID, Key: &types.VirtualService_Key{},
		Config: &types.VirtualService_Config{Scheduler: fs.Scheduler, Flags: fs.Flags, PersistenceEngine: fs.PersistenceEngine}}
	if fs.Fwmark != 0 {
		if fs.Address != "" || fs.Protocol != "" {
			return nil, errors.New("fwmark: a firewall-mark service has no address or protocol")
		}
		svc.Key.Fwmark, svc.Key.Family = fs.Fwmark, types.AddressFamily_IPV4
		switch strings.ToLower(fs.Family) {
		case "", "ipv4":
		case "ipv6":
			svc.Key.Family = types.AddressFamily_IPV6
		default:
			return nil, fmt.Errorf("family: %q: want ipv4 or ipv6", fs.Family)
		}
	} else {
		if fs.Family != "" {
			return nil, errors.New("family: only for fwmark services (an address has its own)")
		}
		p, ok := types.Protocol_value[strings.ToUpper(fs.Protocol)]
		if !ok || p == 0 {
			return nil, fmt.Errorf("protocol: %q: want tcp, udp or sctp", fs.Protocol)
		}
		ap, err := parseAddrPort("address", fs.Address)
		if err != nil {
			return nil, fmt.Errorf("address: %w", err)
		}
		svc.Key.Protocol, svc.Key.Ip, svc.Key.Port = types.Protocol(p), ap.Addr().String(), uint32(ap.Port())
	}
	if fs.Persistence != nil {
		svc.Config.PersistenceTimeout = wrapperspb.UInt32(*fs.Persistence)
	}
	if fs.PersistenceNetmask != nil {
		svc.Config.PersistenceNetmask = wrapperspb.UInt32(*fs.PersistenceNetmask)
	}
	if fs.OnePacket {
		svc.Config.OnePacket = wrapperspb.Bool(true)
	}
	if a := fs.Announce; a != nil {
		svc.Announce = &types.Announce{Always: a.Always, Communities: a.Communities, LargeCommunities: a.LargeCommunities}
		if a.LocalPreference != nil {
			svc.Announce.LocalPreference = wrapperspb.UInt32(*a.LocalPreference)
		}
		if a.LinkBandwidth != nil {
			svc.Announce.LinkBandwidth = wrapperspb.Bool(*a.LinkBandwidth)
		}
	}
	ph, err := fs.PassiveHealth.toProto()
	if err != nil {
		return nil, err
	}
	svc.PassiveHealth = ph
	if svc.HealthyThreshold, err = fs.HealthyThreshold.toProto(); err != nil {
		return nil, err
	}
	if fs.Forward != "" || fs.HealthCheck != nil {
		svc.Defaults = &types.VirtualService_ServerDefaults{}
		if fs.Forward != "" {
			f, err := model.ParseForward(fs.Forward)
			if err != nil {
				return nil, fmt.Errorf("forward: %w", err)
			}
			svc.Defaults.Forward = f
		}
		hc, err := fs.HealthCheck.toProto("health_check")
		if err != nil {
			return nil, err
		}
		svc.Defaults.HealthCheck = hc
	}
	return svc, nil
}

func (p *filePassive) toProto() (*types.PassiveHealth, error) {
	if p == nil {
		return nil, nil
	}
	out := &types.PassiveHealth{}
	if p.Enabled != nil {
		out.Enabled = wrapperspb.Bool(*p.Enabled)
	}
	if p.Window != "" {
		w, err := time.ParseDuration(p.Window)
		if err != nil {
			return nil, fmt.Errorf("passive_health.window: %q is not a duration like 10s", p.Window)
		}
		out.Window = durationpb.New(w)
	}
	if p.MinAttempts != nil {
		out.MinAttempts = wrapperspb.UInt32(*p.MinAttempts)
	}
	if p.MaxFailedPercent != nil {
		out.MaxFailedPercent = wrapperspb.UInt32(*p.MaxFailedPercent)
	}
	return out, nil
}

func (fs *fileServer) toProto(serviceID string) (*types.RealServer, error) {
	ap, err := parseAddrPort("address", fs.Address)
	if err != nil {
		return nil, fmt.Errorf("address: %w", err)
	}
	srv := &types.RealServer{ServiceID: serviceID, Key: &types.RealServer_Key{Ip: ap.Addr().String(), Port: uint32(ap.Port())},
		Config: &types.RealServer_Config{}}
	c := srv.Config
	if fs.Weight != nil {
		c.Weight = wrapperspb.UInt32(*fs.Weight)
	}
	if fs.Forward != "" {
		if c.Forward, err = model.ParseForward(fs.Forward); err != nil {
			return nil, fmt.Errorf("forward: %w", err)
		}
	}
	if fs.UpperThreshold != nil {
		c.UpperThreshold = wrapperspb.UInt32(*fs.UpperThreshold)
	}
	if fs.LowerThreshold != nil {
		c.LowerThreshold = wrapperspb.UInt32(*fs.LowerThreshold)
	}
	if t := fs.Tunnel; t != nil {
		if t.Type != "" {
			v, ok := types.TunnelType_value[strings.ToUpper(t.Type)]
			if !ok {
				return nil, fmt.Errorf("tunnel.type: %q: want ipip, gue or gre", t.Type)
			}
			c.TunnelType = types.TunnelType(v)
		}
		c.TunnelPort, c.TunnelChecksum, c.TunnelRemoteChecksum = t.Port, t.Checksum, t.RemoteChecksum
	}
	if srv.HealthCheck, err = fs.HealthCheck.toProto("health_check"); err != nil {
		return nil, err
	}
	return srv, nil
}

func (h *fileHealth) toProto(field string) (*types.RealServer_HealthCheck, error) {
	if h == nil {
		return nil, nil
	}
	hc := &types.RealServer_HealthCheck{UpThreshold: h.Up, DownThreshold: h.Down, Method: strings.ToUpper(h.Method), Host: h.Host,
		ExpectStatus: h.ExpectStatus, ExpectBody: h.ExpectBody, TlsServerName: h.TLSServerName, TlsVerify: h.TLSVerify,
		UdpSend: h.UDPSend, UdpExpect: h.UDPExpect, Command: h.Command, GrpcService: h.GRPCService}
	st, err := parseStartup(h.Startup)
	if err != nil {
		return nil, fmt.Errorf("%s.startup: %w", field, err)
	}
	hc.Startup = st
	if h.Endpoint != nil {
		hc.Endpoint = wrapperspb.String(*h.Endpoint)
	}
	if h.ThroughVIP != nil {
		hc.ThroughVip = wrapperspb.Bool(*h.ThroughVIP)
	}
	for _, d := range []struct {
		name string
		in   string
		out  **durationpb.Duration
	}{{"period", h.Period, &hc.Period}, {"timeout", h.Timeout, &hc.Timeout}, {"slow_start", h.SlowStart, &hc.SlowStart}} {
		if d.in == "" {
			continue
		}
		v, err := time.ParseDuration(d.in)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %q is not a duration like 2s or 500ms", field, d.name, d.in)
		}
		*d.out = durationpb.New(v)
	}
	return hc, nil
}

// change is one step that brings merlin's state to the file's.
type change struct {
	op       string // "+", "~", "-"
	service  *types.VirtualService
	server   *types.RealServer
	fields   []string // what changes, for "~"
	replaced bool     // a service deleted to come back at another address
}

func (c change) String() string {
	if c.server != nil {
		name := fmt.Sprintf("server %s/%s", c.server.ServiceID, model.ServerKeyString(c.server.Key))
		if c.op == "~" {
			return fmt.Sprintf("~ %s: %s", name, strings.Join(c.fields, ", "))
		}
		if c.op == "+" {
			return fmt.Sprintf("+ %s weight %d", name, c.server.GetConfig().GetWeight().GetValue())
		}
		return "- " + name
	}
	name := "service " + c.service.Id
	switch c.op {
	case "~":
		return fmt.Sprintf("~ %s: %s", name, strings.Join(c.fields, ", "))
	case "+":
		return fmt.Sprintf("+ %s: %s", name, serviceLine(c.service))
	}
	if c.replaced {
		return "- " + name + " (to come back at its new address)"
	}
	return "- " + name
}

// plan compares the file with merlin's state: service creations and
// updates, then server changes, then (with prune) deletions, servers first.
func plan(desired map[string]*desiredItem, actual *types.ListResponse, prune bool) []change {
	have := map[string]*types.ListResponse_Item{}
	for _, item := range actual.Items {
		have[item.Service.Id] = item
	}
	// The order is always valid: services go first (pruned ones, and those
	// whose address changes: a new address is a new kernel service, and
	// freeing it first makes swaps and moves possible), then services
	// change in place, new ones come, servers change, pruned servers go.
	var gone, updated, created, servers, serversGone []change
	for _, id := range slices.Sorted(maps.Keys(desired)) {
		want := desired[id]
		cur := have[id]
		if cur != nil && model.VIPKey(cur.Service.Key) != model.VIPKey(want.service.Key) {
			gone = append(gone, change{op: "-", service: cur.Service, replaced: true})
			cur = nil
		}
		var curServers map[string]*types.RealServer
		if cur == nil {
			created = append(created, change{op: "+", service: want.service})
		} else {
			want.service.Revision = cur.Service.Revision
			if fields := fieldDiff(cur.Service, want.service); len(fields) > 0 {
				updated = append(updated, change{op: "~", service: want.service, fields: fields})
			}
			curServers = map[string]*types.RealServer{}
			for _, s := range cur.Servers {
				curServers[model.ServerKeyString(s.Key)] = s
			}
		}
		for _, k := range slices.Sorted(maps.Keys(want.servers)) {
			ws := want.servers[k]
			cs := curServers[k]
			if cs == nil {
				servers = append(servers, change{op: "+", server: ws})
				continue
			}
			ws.Revision = cs.Revision
			if fields := fieldDiff(cs, ws); len(fields) > 0 {
				servers = append(servers, change{op: "~", server: ws, fields: fields})
			}
		}
		if prune {
			for _, k := range slices.Sorted(maps.Keys(curServers)) {
				if want.servers[k] == nil {
					serversGone = append(serversGone, change{op: "-", server: curServers[k]})
				}
			}
		}
	}
	if prune {
		for _, item := range actual.Items {
			if desired[item.Service.Id] == nil {
				gone = append(gone, change{op: "-", service: item.Service})
			}
		}
	}
	return slices.Concat(gone, updated, created, servers, serversGone)
}

// conflicts lists every address the file gives a service that another
// service, which the apply leaves in place, holds: found before anything is
// written.
func conflicts(desired map[string]*desiredItem, actual *types.ListResponse, prune bool) []error {
	owner := map[string]string{}
	for _, item := range actual.Items {
		owner[model.VIPKey(item.Service.Key)] = item.Service.Id
	}
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(desired)) {
		vip := model.VIPKey(desired[id].service.Key)
		if o, ok := owner[vip]; ok && o != id && desired[o] == nil && !prune {
			errs = append(errs, fmt.Errorf("service %s: address %s is held by service %q, which the file does not have (add --prune to delete it)", id, vip, o))
		}
	}
	return errs
}

// fieldDiff names every field that differs, as "path: old → new".
func fieldDiff(cur, want proto.Message) []string {
	a, b := map[string]string{}, map[string]string{}
	flatten("", cur.ProtoReflect(), a)
	flatten("", want.ProtoReflect(), b)
	var out []string
	for _, k := range slices.Sorted(maps.Keys(merge(a, b))) {
		if k == "revision" || a[k] == b[k] {
			continue
		}
		out = append(out, fmt.Sprintf("%s: %s → %s", k, orNone(a[k]), orNone(b[k])))
	}
	return out
}

func merge(a, b map[string]string) map[string]string {
	m := maps.Clone(a)
	maps.Copy(m, b)
	return m
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// flatten writes each set field as path → text; well-known wrappers and
// durations count as single values.
func flatten(prefix string, m protoreflect.Message, out map[string]string) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		path := prefix + string(fd.Name())
		switch {
		case fd.IsList():
			var parts []string
			for i := 0; i < v.List().Len(); i++ {
				parts = append(parts, scalarText(fd, v.List().Get(i)))
			}
			out[path] = strings.Join(parts, ",")
		case fd.Message() != nil && !strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf."):
			flatten(path+".", v.Message(), out)
		default:
			out[path] = scalarText(fd, v)
		}
		return true
	})
}

func scalarText(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch {
	case fd.Enum() != nil:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return strings.ToLower(string(ev.Name()))
		}
		return fmt.Sprint(v.Enum())
	case fd.Message() != nil:
		b, _ := protojson.Marshal(v.Message().Interface())
		return strings.Trim(string(b), `"`)
	}
	return v.String()
}

func diffCmd(g *globals, apply bool) *cobra.Command {
	var file string
	var prune, yes bool
	use, short := "diff -f FILE", "Show what applying a declarative file would change"
	if apply {
		use, short = "apply -f FILE", "Make merlin's services and servers match a declarative file"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			desired, err := readFile(file)
			if err != nil {
				return err
			}
			// No overall deadline: each request has --timeout, so a large
			// file is not cut off half-way.
			return g.clientFor(0, func(ctx context.Context, c types.MerlinClient) error {
				actual, err := call(ctx, g, func(ctx context.Context) (*types.ListResponse, error) { return listAll(ctx, c) })
				if err != nil {
					return err
				}
				if errs := conflicts(desired, actual, prune); len(errs) > 0 {
					return fmt.Errorf("nothing applied: %w", errors.Join(errs...))
				}
				changes := plan(desired, actual, prune)
				if len(changes) == 0 {
					fmt.Fprintln(g.out, "no changes")
					return nil
				}
				if apply && !yes {
					if err := confirmDeletions(g, changes, len(actual.Items)); err != nil {
						return err
					}
				}
				if !apply {
					for _, ch := range changes {
						fmt.Fprintln(g.out, ch)
					}
					return errDifferences // diff exits 1 when there are differences, as diff(1)
				}
				if len(changes) <= maxBatch {
					done, err := applyAtomically(ctx, g, c, changes)
					if done || err != nil {
						return err
					}
				}
				return applyInOrder(ctx, g, c, changes)
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "declarative YAML file (- for standard input)")
	_ = cmd.MarkFlagRequired("file")
	cmd.Flags().BoolVar(&prune, "prune", false, "also delete services and servers the file does not have")
	if apply {
		cmd.Flags().BoolVarP(&yes, "yes", "y", false, "delete without asking, even many services or all of them")
	}
	return cmd
}

// maxBatch is the most changes merlin's ApplyChanges takes at once.
const maxBatch = 32

// applyAtomically makes the changes in one transaction: all or none.
// done is false where the server cannot (an older merlin, or more than one
// etcd transaction holds): then they go one by one.
func applyAtomically(ctx context.Context, g *globals, c types.MerlinClient, changes []change) (done bool, err error) {
	req := &types.ApplyChangesRequest{}
	for _, ch := range changes {
		req.Changes = append(req.Changes, ch.proto())
	}
	resp, err := call(ctx, g, func(ctx context.Context) (*types.ApplyChangesResponse, error) { return c.ApplyChanges(ctx, req) })
	switch status.Code(err) {
	case codes.OK:
	case codes.Unimplemented, codes.OutOfRange:
		return false, nil
	default:
		return false, fmt.Errorf("nothing applied: %s", errorLine(err))
	}
	for _, ch := range changes {
		fmt.Fprintln(g.out, ch)
	}
	fmt.Fprintf(g.out, "applied %d changes in one transaction (revision %d)\n", len(changes), resp.GetRevision())
	return true, nil
}

// applyInOrder makes the changes one by one, in the plan's order, which
// is valid at every step; a failure says what was applied.
func applyInOrder(ctx context.Context, g *globals, c types.MerlinClient, changes []change) error {
	for i, ch := range changes {
		fmt.Fprintln(g.out, ch)
		if _, err := call(ctx, g, func(ctx context.Context) (any, error) { return nil, applyChange(ctx, c, ch) }); err != nil {
			return fmt.Errorf("%s: %w (%d of %d changes applied, the ones printed before this; run apply again once fixed)", strings.SplitN(ch.String(), ":", 2)[0], errors.New(errorLine(err)), i, len(changes))
		}
	}
	fmt.Fprintf(g.out, "applied %d changes\n", len(changes))
	return nil
}

// proto is the change as ApplyChanges takes it.
func (ch change) proto() *types.Change {
	switch {
	case ch.server != nil && ch.op == "+":
		return &types.Change{Change: &types.Change_CreateServer{CreateServer: ch.server}}
	case ch.server != nil && ch.op == "~":
		return &types.Change{Change: &types.Change_UpdateServer{UpdateServer: ch.server}}
	case ch.server != nil:
		return &types.Change{Change: &types.Change_DeleteServer{DeleteServer: ch.server}}
	case ch.op == "+":
		return &types.Change{Change: &types.Change_CreateService{CreateService: ch.service}}
	case ch.op == "~":
		return &types.Change{Change: &types.Change_UpdateService{UpdateService: ch.service}}
	}
	return &types.Change{Change: &types.Change_DeleteService{DeleteService: &types.DeleteServiceRequest{Id: ch.service.Id, Revision: ch.service.Revision}}}
}

// applyChange makes one change; updates and deletes carry the revision
// the plan was made from, so a concurrent change aborts instead of being
// overwritten.
func applyChange(ctx context.Context, c types.MerlinClient, ch change) error {
	var err error
	switch {
	case ch.server != nil && ch.op == "+":
		_, err = c.CreateServer(ctx, ch.server)
	case ch.server != nil && ch.op == "~":
		_, err = c.UpdateServer(ctx, ch.server)
	case ch.server != nil:
		_, err = c.DeleteServer(ctx, ch.server)
	case ch.op == "+":
		_, err = c.CreateService(ctx, ch.service)
	case ch.op == "~":
		_, err = c.UpdateService(ctx, ch.service)
	default:
		_, err = c.DeleteServiceAtRevision(ctx, &types.DeleteServiceRequest{Id: ch.service.Id, Revision: ch.service.Revision})
	}
	return err
}

// manyDeletions: deleting more services than this at once, or all of them,
// needs a yes.
const manyDeletions = 3

// confirmDeletions asks before an apply deletes many services or all of
// them: at a terminal it asks, elsewhere it refuses (--yes lets it through).
func confirmDeletions(g *globals, changes []change, existing int) error {
	n := 0
	for _, ch := range changes {
		if ch.op == "-" && ch.server == nil && !ch.replaced {
			n++
		}
	}
	if n == 0 || (n <= manyDeletions && n < existing) {
		return nil
	}
	what := fmt.Sprintf("apply would delete %d of the %d services", n, existing)
	if !term.IsTerminal(int(os.Stdin.Fd())) {
		return fmt.Errorf("%s; nothing changed: re-run with --yes if that is what you want", what)
	}
	fmt.Fprintf(g.out, "%s. Go on? [y/N] ", what)
	answer, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
		return fmt.Errorf("%s: not confirmed; nothing changed", what)
	}
	return nil
}

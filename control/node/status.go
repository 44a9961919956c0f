package node

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/merlin-ipvs/merlin/control/store"
	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/types"
)

// statusTTL is how long a node's status outlives the node.
const statusTTL = 15

// PublishStatus keeps the runner's status in etcd under a lease until ctx
// ends: on every change, and at least every few seconds. The status key
// disappears when the node stops renewing its lease.
func PublishStatus(ctx context.Context, st *store.Store, runner *Runner, apiAddress string, log *slog.Logger) {
	for ctx.Err() == nil {
		err := publishUnderLease(ctx, st, runner, apiAddress)
		if ctx.Err() != nil {
			return
		}
		log.Warn("publishing node status failed; retrying", "error", err)
		pause(ctx, 2*time.Second)
	}
}

func publishUnderLease(ctx context.Context, st *store.Store, runner *Runner, apiAddress string) error {
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	lease, err := st.GrantNodeLease(gctx, kctx, statusTTL)
	cancel()
	if err != nil {
		return err
	}
	var last *types.NodeStatus
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		status, changed := runner.Status()
		status.ApiAddress = apiAddress
		if last == nil || !proto.Equal(status, last) {
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			err := st.PutNodeStatus(pctx, lease, status)
			pcancel()
			if err != nil {
				return err
			}
			last = status
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-lease.Renewed():
			if !ok {
				return fmt.Errorf("%s expired", lease)
			}
		case <-changed:
			// Coalesce bursts of changes into one write.
			pause(ctx, 100*time.Millisecond)
		case <-tick.C:
		}
	}
}

// KernelStats reads this node's IPVS counters, naming services by the
// desired state's IDs.
type KernelStats struct {
	Node   string
	Client *ipvs.Client
	Runner *Runner
}

// Stats implements the Stats RPC's source.
func (k *KernelStats) Stats(ctx context.Context) (*types.StatsResponse, error) {
	ids := map[ipvs.ServiceKey]string{}
	if st := k.Runner.Desired(); st != nil {
		for id, ss := range st.Services {
			ids[ServiceKeyOf(ss.Service)] = id
		}
	}
	svcs, err := k.Client.Services(ctx)
	if err != nil {
		return nil, fmt.Errorf("read IPVS services: %w", err)
	}
	resp := &types.StatsResponse{Node: k.Node}
	for _, s := range svcs {
		key := s.Key.Canonical()
		id, ok := ids[key]
		if !ok {
			continue // not merlin's
		}
		ss := &types.ServiceStats{ServiceId: id, Key: apiKey(key), Counters: counters(s.Stats)}
		dests, err := k.Client.Destinations(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("read destinations of %s: %w", key, err)
		}
		for _, d := range dests {
			ss.Servers = append(ss.Servers, &types.ServerStats{
				Key:                 &types.RealServer_Key{Ip: d.Key.Address.String(), Port: uint32(d.Key.Port)},
				Counters:            counters(d.Stats),
				ActiveConnections:   d.ActiveConnections,
				InactiveConnections: d.InactiveConnections,
				Weight:              d.Config.Weight,
			})
		}
		resp.Services = append(resp.Services, ss)
	}
	return resp, nil
}

func counters(s ipvs.Stats) *types.Counters {
	return &types.Counters{Connections: s.Connections, InPackets: s.InPackets, OutPackets: s.OutPackets, InBytes: s.InBytes, OutBytes: s.OutBytes,
		Cps: s.CPS, InPps: s.InPPS, OutPps: s.OutPPS, InBps: s.InBPS, OutBps: s.OutBPS}
}

func apiKey(k ipvs.ServiceKey) *types.VirtualService_Key {
	fam := types.AddressFamily_IPV4
	if k.Family == ipvs.IPv6 {
		fam = types.AddressFamily_IPV6
	}
	if k.FWMark != 0 {
		return &types.VirtualService_Key{Fwmark: k.FWMark, Family: fam}
	}
	proto := map[ipvs.Protocol]types.Protocol{ipvs.TCP: types.Protocol_TCP, ipvs.UDP: types.Protocol_UDP, ipvs.SCTP: types.Protocol_SCTP}[k.Protocol]
	return &types.VirtualService_Key{Ip: k.Address.String(), Port: uint32(k.Port), Protocol: proto, Family: fam}
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

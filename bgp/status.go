package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// PeerStatus is one session as the speaker sees it.
type PeerStatus struct {
	Address          netip.Addr
	AS               uint32
	State            string // idle, connect, active, opensent, openconfirm, established
	Up               bool
	Since            time.Time // established since (when Up)
	PrefixesSent     uint64
	PrefixesReceived uint64 // received, all rejected by the import policy
	Transitions      uint32 // times an established session went down
	UpdatesSent      uint64
	LastError        string
	Shut             bool // shut down for exceeding its prefix limit
}

// Peers reports every configured peer, in configuration order. Before
// the first Set (or outside Run) peers show as "idle".
func (s *Speaker) Peers(ctx context.Context) ([]PeerStatus, error) {
	s.mu.Lock()
	srv, added := s.srv, s.peersAdded
	s.mu.Unlock()
	got := map[string]*api.Peer{}
	if srv != nil && added {
		err := srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
			got[p.GetConf().GetNeighborAddress()] = p
		})
		if err != nil {
			return nil, fmt.Errorf("list bgp peers: %w", err)
		}
	}
	out := make([]PeerStatus, 0, len(s.cfg.Peers))
	for _, p := range s.cfg.Peers {
		st := PeerStatus{Address: p.Address, AS: p.AS, State: "idle"}
		st.LastError, st.Shut = s.ev.get(p.Address.String())
		if gp := got[p.Address.String()]; gp != nil {
			fill(&st, gp)
		}
		out = append(out, st)
	}
	return out, nil
}

func fill(st *PeerStatus, p *api.Peer) {
	state := p.GetState()
	st.State = strings.ToLower(strings.TrimPrefix(state.GetSessionState().String(), "SESSION_STATE_"))
	st.Up = state.GetSessionState() == api.PeerState_SESSION_STATE_ESTABLISHED
	st.Shut = st.Shut || state.GetAdminState() == api.PeerState_ADMIN_STATE_PFX_CT
	st.Transitions = state.GetFlops()
	st.UpdatesSent = state.GetMessages().GetSent().GetUpdate()
	if st.Up {
		st.Since = p.GetTimers().GetState().GetUptime().AsTime()
	}
	if !st.Up {
		return // GoBGP keeps the last counts of a session that is down
	}
	for _, af := range p.GetAfiSafis() {
		st.PrefixesSent += af.GetState().GetAdvertised()
		st.PrefixesReceived += af.GetState().GetReceived()
	}
}

// Table lists the prefixes in the speaker's own routing table: exactly
// the announced routes, since nothing received is imported.
func (s *Speaker) Table(ctx context.Context) ([]netip.Prefix, error) {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil, nil
	}
	var out []netip.Prefix
	for _, f := range []pkt.Family{pkt.RF_IPv4_UC, pkt.RF_IPv6_UC} {
		err := srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: f}, func(n pkt.NLRI, _ []*apiutil.Path) {
			if p, err := netip.ParsePrefix(n.String()); err == nil {
				out = append(out, p)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("list bgp table: %w", err)
		}
	}
	return out, nil
}

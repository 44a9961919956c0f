package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/merlin-ipvs/merlin/bgp/bfd"

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
	LastErrorAt      time.Time  // when the session last went down for LastError
	Shut             bool       // shut down for exceeding its prefix limit
	BFD              *BFDStatus // nil: BFD is off for the peer
	Warning          string     // something the operator should fix, e.g. a missing capability
	Source           string     // Peer.Source
}

// BFDStatus is a peer's BFD session.
type BFDStatus struct {
	State       string // admin-down, down, init, up
	Since       time.Time
	RemoteState string
	TxInterval  time.Duration // negotiated, while up
	DetectTime  time.Duration // negotiated, while up
	Flaps       uint64        // times the session left up
	LastDown    time.Time
	LastDiag    string // why it last left up
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
	sessions := s.bfdSessions()
	peers := s.peers()
	out := make([]PeerStatus, 0, len(peers))
	for _, p := range peers {
		st := PeerStatus{Address: p.Address, AS: p.AS, State: "idle", Source: p.Source}
		var last peerError
		last, st.Shut = s.ev.get(p.Address.String())
		st.LastError, st.LastErrorAt = last.msg, last.at
		if gp := got[p.Address.String()]; gp != nil {
			fill(&st, gp)
		}
		if st.Shut && !strings.HasPrefix(st.LastError, "sent more than") {
			// GoBGP's state can be ahead of its peer event
			st.LastError, st.LastErrorAt = limitReason(p.maxPrefixes()), time.Now()
		}
		st.Warning = s.extNextHopWarning(p.Address)
		if p.BFD != nil {
			st.BFD = &BFDStatus{State: bfd.Down.String(), RemoteState: bfd.Down.String()}
			if b, ok := sessions[p.Address]; ok {
				st.BFD = bfdStatus(b)
			}
		}
		out = append(out, st)
	}
	return out, nil
}

func (s *Speaker) bfdSessions() map[netip.Addr]bfd.Status {
	out := map[netip.Addr]bfd.Status{}
	s.bfdMu.Lock()
	m := s.bfd
	s.bfdMu.Unlock()
	if m == nil {
		return out
	}
	for _, b := range m.Status() {
		out[b.Peer] = b
	}
	return out
}

func bfdStatus(b bfd.Status) *BFDStatus {
	st := &BFDStatus{State: b.State.String(), Since: b.Since, RemoteState: b.RemoteState.String(),
		TxInterval: b.TxInterval, DetectTime: b.DetectTime, Flaps: b.Flaps, LastDown: b.LastDown}
	if b.Flaps > 0 {
		st.LastDiag = b.LastDiag.String()
	}
	return st
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

package node

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// BelowThreshold is a service below its healthy threshold on this node.
type BelowThreshold struct {
	Healthy, Total, Need int
	Action               types.BelowThresholdAction
	Since                time.Time
}

// thresholdState is what the runner remembers of a service's threshold
// between passes: whether it is below, and since when (zero: it has not
// changed since the runner started).
type thresholdState struct {
	below bool
	since time.Time
}

// applyThreshold judges a planned service against its healthy threshold,
// with hold-down: a change waits until hold_down has passed since the
// last one (the plan's NextChange says when to look again). Below, with
// action SORRY, the real servers go to weight 0 and the sorry servers
// take new connections. It returns the state to remember.
func applyThreshold(p *ServicePlan, prev thresholdState, now time.Time) thresholdState {
	t := p.State.Service.GetHealthyThreshold()
	if t == nil || p.Err != nil {
		return thresholdState{}
	}
	healthy, total := 0, 0
	for _, sp := range p.Servers {
		if configuredWeight(p, sp.Key) == 0 {
			continue // drained by its operator: not part of the set
		}
		total++
		if sp.Up {
			healthy++
		}
	}
	need := thresholdNeed(t, total)
	st := prev
	if below := total > 0 && healthy < need; below != prev.below {
		hold := model.DefaultThresholdHoldDown
		if t.HoldDown != nil {
			hold = t.HoldDown.AsDuration()
		}
		if at := prev.since.Add(hold); !prev.since.IsZero() && now.Before(at) {
			p.NextChange = earliest(p.NextChange, at)
		} else {
			st = thresholdState{below: below, since: now}
		}
	}
	if st.below {
		p.Below = &BelowThreshold{Healthy: healthy, Total: total, Need: need, Action: t.Action, Since: st.since}
		if t.Action == types.BelowThresholdAction_SORRY {
			p.Virtual.Destinations = sorryDestinations(p, t)
		}
	}
	return st
}

// thresholdNeed: the healthy servers a service of total servers needs.
func thresholdNeed(t *types.HealthyThreshold, total int) int {
	need := int(t.GetMinServers().GetValue())
	if pct := int(t.GetMinPercent().GetValue()); pct > 0 {
		need = max(need, (total*pct+99)/100)
	}
	return need
}

func configuredWeight(p *ServicePlan, key string) uint32 {
	return p.State.Servers[key].GetConfig().GetWeight().GetValue()
}

// sorryDestinations: the real servers at weight 0 (their connections
// continue), and the sorry servers at weight 1.
func sorryDestinations(p *ServicePlan, t *types.HealthyThreshold) []ipvs.Destination {
	out := make([]ipvs.Destination, 0, len(p.Virtual.Destinations)+len(t.SorryServers))
	for _, d := range p.Virtual.Destinations {
		d.Config.Weight = 0
		out = append(out, d)
	}
	fwd := sorryForward(p.State.Service, t)
	for _, k := range t.SorryServers {
		addr, err := netip.ParseAddr(k.GetIp())
		if err != nil {
			continue // validated when stored
		}
		out = append(out, ipvs.Destination{Key: ipvs.DestinationKey{Address: addr, Port: uint16(k.GetPort())},
			Config: ipvs.DestinationConfig{Weight: 1, Forward: fwd}})
	}
	slices.SortFunc(out, func(a, b ipvs.Destination) int {
		return netip.AddrPortFrom(a.Key.Address, a.Key.Port).Compare(netip.AddrPortFrom(b.Key.Address, b.Key.Port))
	})
	return out
}

func sorryForward(svc *types.VirtualService, t *types.HealthyThreshold) ipvs.ForwardMethod {
	fwd := t.SorryForward
	if fwd == types.ForwardMethod_UNSET_FORWARD_METHOD {
		fwd = svc.GetDefaults().GetForward()
	}
	switch fwd {
	case types.ForwardMethod_MASQ:
		return ipvs.Masquerade
	case types.ForwardMethod_TUNNEL:
		return ipvs.Tunnel
	}
	return ipvs.DirectRoute
}

// ActionName is how status and metrics name an action.
func ActionName(a types.BelowThresholdAction) string { return strings.ToLower(a.String()) }

func (b *BelowThreshold) reason() string {
	return fmt.Sprintf("below its healthy threshold (%d of %d servers up, needs %d)", b.Healthy, b.Total, b.Need)
}

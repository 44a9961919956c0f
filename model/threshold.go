package model

import (
	"fmt"
	"time"

	"github.com/merlin-ipvs/merlin/types"
)

// Healthy threshold defaults and bounds.
const (
	DefaultThresholdHoldDown = 10 * time.Second
	MaxThresholdHoldDown     = time.Hour
	MaxSorryServers          = 16
	maxThresholdServers      = 1_000_000
)

// normalizeThreshold checks a service's healthy threshold; an empty one is
// nil. fwmark: the service is a firewall-mark one (sorry servers without
// a port).
func normalizeThreshold(t *types.HealthyThreshold, fwmark bool) (*types.HealthyThreshold, error) {
	if t == nil || (t.MinServers == nil && t.MinPercent == nil && t.HoldDown == nil && t.Action == types.BelowThresholdAction_KEEP_SERVING &&
		len(t.SorryServers) == 0 && t.SorryForward == types.ForwardMethod_UNSET_FORWARD_METHOD) {
		return nil, nil
	}
	if t.MinServers.GetValue() == 0 && t.MinPercent.GetValue() == 0 {
		return nil, FieldErrorf("healthy_threshold", "set min_servers or min_percent")
	}
	if m := t.MinServers; m != nil && m.Value > maxThresholdServers {
		return nil, FieldErrorf("healthy_threshold.min_servers", "%d: want at most %d", m.Value, maxThresholdServers)
	}
	if p := t.MinPercent; p != nil && p.Value > 100 {
		return nil, FieldErrorf("healthy_threshold.min_percent", "%d: want 1 to 100", p.Value)
	}
	if h := t.HoldDown; h != nil {
		if err := h.CheckValid(); err != nil || h.AsDuration() < 0 || h.AsDuration() > MaxThresholdHoldDown {
			return nil, FieldErrorf("healthy_threshold.hold_down", "%s: want 0 to %s", h.AsDuration(), MaxThresholdHoldDown)
		}
	}
	if _, ok := types.BelowThresholdAction_name[int32(t.Action)]; !ok {
		return nil, FieldErrorf("healthy_threshold.action", "unknown action %d", t.Action)
	}
	if _, ok := types.ForwardMethod_name[int32(t.SorryForward)]; !ok {
		return nil, FieldErrorf("healthy_threshold.sorry_forward", "unknown forward method %d", t.SorryForward)
	}
	return t, checkSorryServers(t, fwmark)
}

func checkSorryServers(t *types.HealthyThreshold, fwmark bool) error {
	sorry := t.Action == types.BelowThresholdAction_SORRY
	switch {
	case sorry && len(t.SorryServers) == 0:
		return FieldErrorf("healthy_threshold.sorry_servers", "required with action SORRY")
	case !sorry && len(t.SorryServers) > 0:
		return FieldErrorf("healthy_threshold.sorry_servers", "only with action SORRY")
	case len(t.SorryServers) > MaxSorryServers:
		return FieldErrorf("healthy_threshold.sorry_servers", "%d: want at most %d", len(t.SorryServers), MaxSorryServers)
	}
	seen := map[string]bool{}
	for i, k := range t.SorryServers {
		field := fmt.Sprintf("healthy_threshold.sorry_servers[%d]", i)
		if k == nil {
			return FieldErrorf(field, "required")
		}
		addr, err := ParseAddr(k.Ip)
		if err != nil {
			return FieldErrorf(field+".ip", "%v", err)
		}
		k.Ip = addr.String()
		if err := ValidatePort(field+".port", k.Port, fwmark); err != nil {
			return err
		}
		if s := ServerKeyString(k); seen[s] {
			return FieldErrorf(field, "%s is listed twice", s)
		}
		seen[ServerKeyString(k)] = true
	}
	return nil
}

// IsSorryServer: key is one of the service's sorry servers.
func IsSorryServer(svc *types.VirtualService, key *types.RealServer_Key) bool {
	want := ServerKeyString(key)
	for _, k := range svc.GetHealthyThreshold().GetSorryServers() {
		if ServerKeyString(k) == want {
			return true
		}
	}
	return false
}

package model

import (
	"strconv"
	"strings"
	"time"

	"github.com/merlin-ipvs/merlin/types"
)

// LargeCommunity is GLOBAL:LOCAL1:LOCAL2.
type LargeCommunity [3]uint32

// ParseCommunity reads an RFC 1997 community, ASN:VALUE (each 0 to 65535).
func ParseCommunity(s string) (uint32, error) {
	a, b, ok := strings.Cut(s, ":")
	hi, err1 := strconv.ParseUint(a, 10, 16)
	lo, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, FieldErrorf("community", "%q: want ASN:VALUE, each 0 to 65535", short(s))
	}
	return uint32(hi<<16 | lo), nil
}

// ParseLargeCommunity reads an RFC 8092 large community,
// GLOBAL:LOCAL1:LOCAL2 (each 0 to 4294967295).
func ParseLargeCommunity(s string) (LargeCommunity, error) {
	parts := strings.Split(s, ":")
	var v LargeCommunity
	if len(parts) != 3 {
		return v, FieldErrorf("large community", "%q: want GLOBAL:LOCAL1:LOCAL2", short(s))
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return v, FieldErrorf("large community", "%q: want GLOBAL:LOCAL1:LOCAL2, each 0 to 4294967295", short(s))
		}
		v[i] = uint32(n)
	}
	return v, nil
}

// short quotes at most a short prefix of a value in an error.
func short(s string) string { return Truncate(s, 32) }

// Truncate keeps at most n bytes of s, marking the cut.
func Truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// normalizeAnnounce checks a service's BGP options; an empty one is nil.
func normalizeAnnounce(a *types.Announce) (*types.Announce, error) {
	if a == nil || (!a.Always && len(a.Communities) == 0 && len(a.LargeCommunities) == 0 && a.LocalPreference == nil && a.LinkBandwidth == nil) {
		return nil, nil
	}
	for _, c := range a.Communities {
		if _, err := ParseCommunity(c); err != nil {
			return nil, FieldErrorf("announce.communities", "%s", err.(*FieldError).Reason)
		}
	}
	for _, c := range a.LargeCommunities {
		if _, err := ParseLargeCommunity(c); err != nil {
			return nil, FieldErrorf("announce.large_communities", "%s", err.(*FieldError).Reason)
		}
	}
	return a, nil
}

// Passive health defaults and bounds.
const (
	DefaultPassiveWindow      = 10 * time.Second
	DefaultPassiveMinAttempts = 5
	DefaultPassiveMaxFailed   = 50
)

// normalizePassive checks a service's passive health settings; an empty
// one is nil.
func normalizePassive(p *types.PassiveHealth) (*types.PassiveHealth, error) {
	if p == nil || (p.Enabled == nil && p.Window == nil && p.MinAttempts == nil && p.MaxFailedPercent == nil) {
		return nil, nil
	}
	if w := p.Window; w != nil {
		if err := w.CheckValid(); err != nil || w.AsDuration() < 2*time.Second || w.AsDuration() > 5*time.Minute {
			return nil, FieldErrorf("passive_health.window", "%s: want 2s to 5m", w.AsDuration())
		}
	}
	if m := p.MinAttempts; m != nil && (m.Value < 1 || m.Value > 1_000_000) {
		return nil, FieldErrorf("passive_health.min_attempts", "%d: want 1 to 1000000", m.Value)
	}
	if m := p.MaxFailedPercent; m != nil && m.Value > 99 {
		return nil, FieldErrorf("passive_health.max_failed_percent", "%d: want 0 to 99", m.Value)
	}
	return p, nil
}

// PassiveSettings are a service's passive health settings with defaults;
// ok is false when passive health is off.
func PassiveSettings(p *types.PassiveHealth) (window time.Duration, minAttempts, maxFailedPercent uint32, ok bool) {
	if !p.GetEnabled().GetValue() {
		return 0, 0, 0, false
	}
	window, minAttempts, maxFailedPercent = DefaultPassiveWindow, DefaultPassiveMinAttempts, DefaultPassiveMaxFailed
	if p.Window != nil {
		window = p.Window.AsDuration()
	}
	if p.MinAttempts != nil {
		minAttempts = p.MinAttempts.Value
	}
	if p.MaxFailedPercent != nil {
		maxFailedPercent = p.MaxFailedPercent.Value
	}
	return window, minAttempts, maxFailedPercent, true
}

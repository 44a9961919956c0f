package bgp

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
)

// Route is one host route to announce with its attributes.
type Route struct {
	Prefix           netip.Prefix // a /32 or /128
	Communities      []Community
	LargeCommunities []LargeCommunity
	// LocalPref is sent to iBGP peers (eBGP peers never see it); nil: the
	// receiver's default.
	LocalPref *uint32
	// LinkBandwidth, when above 0, is sent as the link-bandwidth extended
	// community (draft-ietf-idr-link-bandwidth: non-transitive, the local
	// AS, bytes per second as an IEEE float): routers that do weighted
	// ECMP (FRR's `bgp bestpath bandwidth`) split traffic by it.
	LinkBandwidth float32
}

// Community is an RFC 1997 community, ASN:VALUE.
type Community uint32

// GracefulShutdown is RFC 8326's GRACEFUL_SHUTDOWN community, 65535:0.
const GracefulShutdown Community = 0xFFFF0000

// LargeCommunity is an RFC 8092 large community, GLOBAL:LOCAL1:LOCAL2.
type LargeCommunity struct{ Global, Local1, Local2 uint32 }

func (c Community) String() string { return fmt.Sprintf("%d:%d", uint32(c)>>16, uint32(c)&0xFFFF) }

func (c LargeCommunity) String() string { return fmt.Sprintf("%d:%d:%d", c.Global, c.Local1, c.Local2) }

// HostRoute is the route announcing one address.
func HostRoute(a netip.Addr) Route { return Route{Prefix: netip.PrefixFrom(a, a.BitLen())} }

func (r Route) validate() error {
	if !r.Prefix.IsValid() || r.Prefix.Bits() != r.Prefix.Addr().BitLen() || r.Prefix.Addr().Zone() != "" {
		return fmt.Errorf("route %s: merlin announces host routes only (/32, /128)", r.Prefix)
	}
	if bw := float64(r.LinkBandwidth); bw < 0 || math.IsNaN(bw) || math.IsInf(bw, 0) {
		return fmt.Errorf("route %s: link bandwidth %v: want a finite number ≥ 0", r.Prefix, r.LinkBandwidth)
	}
	return nil
}

// normalized sorts and deduplicates the communities, so that equal
// routes compare equal field by field; already normalized lists are kept.
func (r Route) normalized() Route {
	if !isSet(r.Communities, cmp.Compare[Community]) {
		r.Communities = sortedCommunities(r.Communities)
	}
	if !isSet(r.LargeCommunities, cmpLarge) {
		r.LargeCommunities = sortedLarge(r.LargeCommunities)
	}
	return r
}

// isSet: strictly increasing.
func isSet[T any](s []T, cmp func(a, b T) int) bool {
	for i := 1; i < len(s); i++ {
		if cmp(s[i-1], s[i]) >= 0 {
			return false
		}
	}
	return true
}

// same: the very same slices (normalized returned r unchanged).
func (r Route) same(o Route) bool {
	return len(r.Communities) == len(o.Communities) && len(r.LargeCommunities) == len(o.LargeCommunities) &&
		(len(r.Communities) == 0 || &r.Communities[0] == &o.Communities[0]) &&
		(len(r.LargeCommunities) == 0 || &r.LargeCommunities[0] == &o.LargeCommunities[0])
}

// Equal compares routes whose communities are sorted (as the speaker
// keeps them, and as the planner makes them).
func (r Route) Equal(o Route) bool {
	lp := func(p *uint32) int64 {
		if p == nil {
			return -1
		}
		return int64(*p)
	}
	return r.Prefix == o.Prefix && lp(r.LocalPref) == lp(o.LocalPref) && r.LinkBandwidth == o.LinkBandwidth &&
		slices.Equal(r.Communities, o.Communities) && slices.Equal(r.LargeCommunities, o.LargeCommunities)
}

func sortedCommunities(c []Community) []Community {
	c = slices.Clone(c)
	slices.Sort(c)
	return slices.Compact(c)
}

func sortedLarge(c []LargeCommunity) []LargeCommunity {
	c = slices.Clone(c)
	slices.SortFunc(c, cmpLarge)
	return slices.Compact(c)
}

func cmpLarge(a, b LargeCommunity) int {
	return cmp.Or(cmp.Compare(a.Global, b.Global), cmp.Compare(a.Local1, b.Local1), cmp.Compare(a.Local2, b.Local2))
}

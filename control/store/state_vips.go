package store

import (
	"fmt"
	"maps"
	"slices"

	"github.com/merlin-ipvs/merlin/model"
	"github.com/merlin-ipvs/merlin/types"
)

// vipShare tracks which valid stored services claim each VIP. merlin never
// writes two services on one VIP, but the original Merlin did: of such
// services the first by ID is the desired state (the one the VIP index
// names when merlin builds it), the others are listed invalid — so every
// node programs the same one, whatever order the values arrive in — and
// the next takes over when it goes.
type vipShare struct {
	holders map[string]map[string]bool // VIP key → IDs of valid services on it
	of      map[string]string          // service ID → its VIP key
}

func (v *vipShare) clone() vipShare {
	c := vipShare{holders: make(map[string]map[string]bool, len(v.holders)), of: maps.Clone(v.of)}
	for k, ids := range v.holders {
		c.holders[k] = maps.Clone(ids)
	}
	return c
}

// first is the ID that holds vk ("" if none).
func (v *vipShare) first(vk string) string {
	if len(v.holders[vk]) == 0 {
		return ""
	}
	return slices.Min(slices.Collect(maps.Keys(v.holders[vk])))
}

// claim moves service id's claim to vk ("" for none: it is gone or
// invalid) and returns the services whose standing changed with it.
func (v *vipShare) claim(id, vk string) (others []string) {
	old := v.of[id]
	if old == vk {
		return nil
	}
	if old != "" {
		wasFirst := v.first(old) == id
		delete(v.holders[old], id)
		if len(v.holders[old]) == 0 {
			delete(v.holders, old)
		}
		if wasFirst { // a new first: every other claim's standing (and reason) changes
			others = append(others, slices.Sorted(maps.Keys(v.holders[old]))...)
		}
		delete(v.of, id)
	}
	if vk != "" {
		prev := v.first(vk)
		if v.holders == nil {
			v.holders, v.of = map[string]map[string]bool{}, map[string]string{}
		}
		if v.holders[vk] == nil {
			v.holders[vk] = map[string]bool{}
		}
		if prev != "" && id < prev { // id becomes first
			others = append(others, slices.Sorted(maps.Keys(v.holders[vk]))...)
		}
		v.holders[vk][id], v.of[id] = true, vk
	}
	return others
}

// shareVIP decides whether a valid service may be the desired state: it
// records its claim and re-decides the services whose standing that
// changes. It returns why not ("" if it may).
func (s *State) shareVIP(id string, svc *types.VirtualService) string {
	vk := ""
	if svc != nil {
		vk = model.VIPKey(svc.Key)
	}
	for _, other := range s.vips.claim(id, vk) {
		s.touch(other)
		s.rebuild(other)
	}
	if first := s.vips.first(vk); svc != nil && first != id {
		return fmt.Sprintf("shares VIP %s with service %q (the original Merlin allowed it): not served while %q has it", vk, first, first)
	}
	return ""
}

// DuplicateVIPs are the VIPs several valid stored services claim.
func (s *State) DuplicateVIPs() []*types.DuplicateVIP {
	var out []*types.DuplicateVIP
	for _, vk := range slices.Sorted(maps.Keys(s.vips.holders)) {
		if ids := s.vips.holders[vk]; len(ids) > 1 {
			out = append(out, &types.DuplicateVIP{Vip: vk, Services: slices.Sorted(maps.Keys(ids))})
		}
	}
	return out
}

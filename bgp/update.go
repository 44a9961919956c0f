package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Changes are what one change of the node makes of its announced routes:
// routes to announce (new, or with new attributes) and prefixes to
// withdraw. Withdrawals apply first, so a prefix in both is announced.
type Changes struct {
	Announce []Route
	Withdraw []netip.Prefix
}

// Empty: nothing to change.
func (c Changes) Empty() bool { return len(c.Announce)+len(c.Withdraw) == 0 }

// checked validates and normalizes the changes (a copy where a route
// needs normalizing, never the caller's slice); nothing is applied when
// any is refused.
func (c Changes) checked(carries func(Family) bool) (Changes, error) {
	out := c
	for i, r := range c.Announce {
		if err := r.validate(); err != nil {
			return Changes{}, err
		}
		if f := familyOf(r.Prefix); carries != nil && !carries(f) {
			return Changes{}, fmt.Errorf("route %s: no peer carries %s", r.Prefix, f)
		}
		if n := r.normalized(); !n.same(r) {
			if &out.Announce[0] == &c.Announce[0] {
				out.Announce = slices.Clone(c.Announce)
			}
			out.Announce[i] = n
		}
	}
	for _, p := range c.Withdraw {
		if !p.IsValid() {
			return Changes{}, errors.New("withdraw: an invalid prefix")
		}
	}
	return out, nil
}

// DiffRoutes is what turns the routes held (by prefix) into routes (one
// per prefix).
func DiffRoutes(held map[netip.Prefix]Route, routes []Route) Changes {
	var ch Changes
	for _, r := range routes {
		if old, ok := held[r.Prefix]; !ok || !old.Equal(r) {
			ch.Announce = append(ch.Announce, r)
		}
	}
	if len(routes)-len(ch.Announce) < len(held) { // some held are not wanted
		wanted := make(map[netip.Prefix]bool, len(routes))
		for _, r := range routes {
			wanted[r.Prefix] = true
		}
		for p := range held {
			if !wanted[p] {
				ch.Withdraw = append(ch.Withdraw, p)
			}
		}
	}
	return ch
}

func sortedByPrefix(routes []Route) []Route {
	byPrefix := func(a, b Route) int { return a.Prefix.Compare(b.Prefix) }
	if slices.IsSortedFunc(routes, byPrefix) {
		return routes
	}
	routes = slices.Clone(routes)
	slices.SortFunc(routes, byPrefix)
	return routes
}

// Update applies changes to the announced routes: what a change costs
// does not grow with the routes announced. Before Run has started it
// changes the routes Set recorded; it needs an earlier Set.
func (s *Speaker) Update(ctx context.Context, changes Changes) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, err := changes.checked(s.carries)
	if err != nil {
		return err
	}
	if !s.wantSet {
		return errors.New("bgp: routes updated before they were set")
	}
	if s.srv == nil {
		s.want = applyChanges(s.want, ch)
		return nil
	}
	var errs []error
	for _, p := range ch.Withdraw {
		old, ok := s.sent[p]
		if !ok {
			continue
		}
		if err := s.withdraw(old.Route); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
			continue
		}
		delete(s.sent, p)
	}
	for _, r := range ch.Announce {
		if old, ok := s.sent[r.Prefix]; ok && old.Equal(r) {
			continue
		}
		if err := s.announce(r); err != nil {
			errs = append(errs, fmt.Errorf("announce %s: %w", r.Prefix, err))
			continue
		}
		s.sent[r.Prefix] = &sentRoute{Route: r, gen: s.gen}
	}
	return errors.Join(errs...)
}

// applyChanges is routes changed by ch, sorted by prefix (a new slice).
func applyChanges(routes []Route, ch Changes) []Route {
	byPrefix := make(map[netip.Prefix]Route, len(routes)+len(ch.Announce))
	for _, r := range routes {
		byPrefix[r.Prefix] = r
	}
	for _, p := range ch.Withdraw {
		delete(byPrefix, p)
	}
	for _, r := range ch.Announce {
		byPrefix[r.Prefix] = r
	}
	out := make([]Route, 0, len(byPrefix))
	for _, r := range byPrefix {
		out = append(out, r)
	}
	return sortedByPrefix(out)
}

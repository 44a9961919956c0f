// Package iproute reads a kernel route's next hops with iproute2's `ip`,
// in this network namespace or a named one, for tests and benchmarks whose
// router (bird2 or FRR) installs ECMP routes. Needs the `ip` command; a
// named namespace needs root.
package iproute

import (
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
)

var (
	via  = regexp.MustCompile(`via (\d+\.\d+\.\d+\.\d+)`)
	nhid = regexp.MustCompile(`nhid (\d+)`)
)

// NextHops are the next hops of the IPv4 host route to addr in the
// namespace netns ("": this one), sorted; none: no route. FRR installs
// nexthop objects (nhid): they are followed to their members.
func NextHops(netns, addr string) ([]string, error) {
	out, err := ip(netns, "-4", "route", "show", addr+"/32")
	if err != nil {
		return nil, err
	}
	if m := nhid.FindStringSubmatch(out); m != nil && !strings.Contains(out, "via") {
		if out, err = nexthopGroup(netns, m[1]); err != nil {
			return nil, err
		}
	}
	var hops []string
	for _, m := range via.FindAllStringSubmatch(out, -1) {
		hops = append(hops, m[1])
	}
	slices.Sort(hops)
	return hops, nil
}

// nexthopGroup is the text of a nexthop object, a group's members
// expanded ("group 12/13" or "group 12,1/13,1").
func nexthopGroup(netns, id string) (string, error) {
	out, err := ip(netns, "nexthop", "show", "id", id)
	if err != nil {
		return "", err
	}
	_, group, ok := strings.Cut(out, "group ")
	if !ok {
		return out, nil
	}
	var all strings.Builder
	for _, member := range strings.Split(strings.Fields(group)[0], "/") {
		memberID, _, _ := strings.Cut(member, ",")
		sub, err := nexthopGroup(netns, memberID)
		if err != nil {
			return "", err
		}
		all.WriteString(sub)
	}
	return all.String(), nil
}

func ip(netns string, args ...string) (string, error) {
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/merlin-ipvs/merlin/types"
)

// printFindings lists what an operator must fix in the stored state:
// values merlin skips and VIPs several services share, each with a "fix:"
// line that is a shell command (its note after "#").
func printFindings(w io.Writer, resp *types.StatusResponse) {
	if len(resp.InvalidKeys) > 0 {
		fmt.Fprintln(w, "stored objects merlin skips (fix each; an update that makes one valid is accepted):")
		for _, k := range resp.InvalidKeys {
			fmt.Fprintf(w, "  %s: %s\n    fix: %s\n", k.Key, k.Reason, fixCommand(k.Key, k.Reason))
		}
	}
	if len(resp.DuplicateVips) > 0 {
		fmt.Fprintln(w, "VIPs several services share (the original Merlin allowed it; merlin serves them but refuses new ones):")
		for _, d := range resp.DuplicateVips {
			fmt.Fprintf(w, "  %s: services %s\n", d.Vip, strings.Join(d.Services, ", "))
			for _, id := range d.Services[1:] {
				fmt.Fprintf(w, "    fix: meradm service del %s  # keep %s, or another one of them\n", id, d.Services[0])
			}
		}
	}
}

// fixCommand is the meradm command that makes a stored object valid again,
// chosen by the field its reason names.
func fixCommand(key, reason string) string {
	if _, rest, ok := strings.Cut(key, "/servers/"); ok {
		id, addr, _ := strings.Cut(rest, "/")
		switch {
		case strings.Contains(reason, "does not exist"), strings.Contains(reason, "under service"), strings.HasPrefix(reason, "service "):
			return fmt.Sprintf("# fix or create service %s first: its servers come back with it", id)
		case strings.Contains(reason, "config.weight"):
			return fmt.Sprintf("meradm server edit %s %s -w 65535", id, addr)
		case strings.Contains(reason, "health_check.period"), strings.Contains(reason, "health_check.timeout"):
			return fmt.Sprintf("meradm server edit %s %s --health-period 1s --health-timeout 1s", id, addr)
		case strings.Contains(reason, "health_check"):
			return fmt.Sprintf("meradm server edit %s %s --health-endpoint ''  # no check; or give a valid one", id, addr)
		}
		return fmt.Sprintf("meradm server del %s %s  # then add it again as it should be", id, addr)
	}
	if _, id, ok := strings.Cut(key, "/services/"); ok {
		switch {
		case strings.Contains(reason, "shares VIP"):
			return "# see the VIPs several services share, below"

		case strings.Contains(reason, "config.scheduler"):
			return fmt.Sprintf("meradm service edit %s -s wlc  # or another scheduler", id)
		case strings.Contains(reason, "config.flags"):
			return fmt.Sprintf("meradm service edit %s -b ''  # or valid flags", id)
		case strings.Contains(reason, "config.persistence"):
			return fmt.Sprintf("meradm service edit %s -p 300  # or -p 0", id)
		}
		return fmt.Sprintf("meradm service del %s  # its servers go too; then add it again as it should be", id)
	}
	return "etcdctl del " + key + "  # not merlin's"
}

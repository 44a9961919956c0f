package model

import (
	"fmt"
	"strings"

	"github.com/merlin-ipvs/merlin/types"
)

// forwardMethods is the one table of forwarding-method names: the name
// merlin writes, the column ipvsadm -Ln shows, and the names it accepts
// (ipvsadm's letters and long names, the original Merlin's).
var forwardMethods = []struct {
	method  types.ForwardMethod
	name    string
	listed  string
	aliases []string
}{
	{types.ForwardMethod_ROUTE, "route", "Route", []string{"dr", "droute", "direct", "gatewaying", "g"}},
	{types.ForwardMethod_TUNNEL, "tunnel", "Tunnel", []string{"ipip", "tun", "i"}},
	{types.ForwardMethod_MASQ, "masq", "Masq", []string{"nat", "masquerade", "masquerading", "m"}},
}

// ForwardNames lists the canonical forwarding-method names.
const ForwardNames = "route, tunnel or masq"

// ParseForward reads a forwarding method by any of its names.
func ParseForward(s string) (types.ForwardMethod, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	for _, f := range forwardMethods {
		if s == f.name {
			return f.method, nil
		}
		for _, a := range f.aliases {
			if s == a {
				return f.method, nil
			}
		}
	}
	return 0, fmt.Errorf("invalid forward method %q: want %s", s, ForwardNames)
}

// ForwardName is the canonical name of a forwarding method ("" when unset).
func ForwardName(m types.ForwardMethod) string {
	for _, f := range forwardMethods {
		if f.method == m {
			return f.name
		}
	}
	return ""
}

// ForwardListed is the name ipvsadm -Ln shows ("-" when unset).
func ForwardListed(m types.ForwardMethod) string {
	for _, f := range forwardMethods {
		if f.method == m {
			return f.listed
		}
	}
	return "-"
}

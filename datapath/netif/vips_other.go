//go:build !linux

package netif

import (
	"context"
	"errors"
	"net/netip"
)

// SetVIPs: VIP addresses on a dummy interface are Linux's.
func (v *VIPs) SetVIPs(context.Context, []netip.Addr) error {
	return errors.New("netif: not supported on this OS (VIPs on a dummy interface need Linux)")
}

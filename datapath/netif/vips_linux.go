package netif

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

func (v *VIPs) ensureLink() (netlink.Link, error) {
	l, err := netlink.LinkByName(v.link)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("find interface %s: %w", v.link, err)
		}
		if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: v.link}}); err != nil {
			return nil, fmt.Errorf("create dummy interface %s: %w", v.link, err)
		}
		if l, err = netlink.LinkByName(v.link); err != nil {
			return nil, fmt.Errorf("find interface %s: %w", v.link, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("bring %s up: %w", v.link, err)
		}
	}
	return l, nil
}

// SetVIPs makes the interface hold vips (host routes: /32, /128); it
// removes only addresses this manager added that are no longer wanted.
func (v *VIPs) SetVIPs(_ context.Context, vips []netip.Addr) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	l, err := v.ensureLink()
	if err != nil {
		return err
	}
	have := map[netip.Addr]bool{}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", v.link, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			have[ip.Unmap()] = true
		}
	}
	want := map[netip.Addr]bool{}
	var errs []error
	for _, ip := range vips {
		ip = ip.Unmap()
		want[ip] = true
		if have[ip] {
			continue
		}
		if err := netlink.AddrAdd(l, hostAddr(ip)); err != nil {
			errs = append(errs, fmt.Errorf("add %s to %s: %w", ip, v.link, err))
			continue
		}
		v.added[ip] = true
	}
	for ip := range v.added {
		if want[ip] {
			continue
		}
		if have[ip] {
			if err := netlink.AddrDel(l, hostAddr(ip)); err != nil {
				errs = append(errs, fmt.Errorf("remove %s from %s: %w", ip, v.link, err))
				continue
			}
		}
		delete(v.added, ip)
	}
	if err := v.save(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func hostAddr(ip netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}}
}

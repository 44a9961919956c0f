//go:build !linux

package ipvs

import "errors"

// dialNetlink: IPVS is Linux's.
func dialNetlink(Options) (socket, sockInfo, error) {
	return nil, sockInfo{}, errors.New("ipvs: not supported on this OS (IPVS is a Linux kernel feature)")
}

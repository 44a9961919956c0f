//go:build !linux

package health

import (
	"errors"
	"net"
)

// PathDialer is the net.Dialer of a probe; checks through the VIP need
// Linux (socket marks and IPVS).
func PathDialer(c Check, _ string) (*net.Dialer, error) {
	if c.Mark != 0 {
		return nil, errors.New("checks through the VIP need Linux")
	}
	return &net.Dialer{}, nil
}

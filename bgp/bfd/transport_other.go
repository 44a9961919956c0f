//go:build !linux

package bfd

import (
	"errors"
	"net/netip"
)

// Port is where single-hop BFD control packets go (RFC 5881 §4).
const Port = 3784

type noTransport struct{}

func defaultTransport() transport { return noTransport{} }

var errNoTransport = errors.New("bfd needs Linux (IP_RECVTTL)")

func (noTransport) listen(func(netip.Addr, int, []byte)) (func(), error) {
	return nil, errNoTransport
}

func (noTransport) open(netip.Addr, netip.Addr) (sender, error) { return nil, errNoTransport }

package lab

import (
	"fmt"
	"net"
	"strings"
)

// TunVIP is the IPIP tunnel services' VIP (EnableTunnel puts it on a
// backend).
const TunVIP = "198.19.0.40"

// EnableTunnel makes backend i an IPIP tunnel endpoint for TunVIP: the
// VIP on its loopback, tunl0 up with reverse-path filtering off (the
// decapsulated packets come from the client, whose route is not tunl0),
// and replies from the VIP straight to the router, as for direct routing.
func (l *Lab) EnableTunnel(i int) error {
	b := l.Backends[i]
	for _, c := range [][]string{
		{"modprobe", "ipip"}, {"ip", "link", "set", "tunl0", "up"},
		{"sysctl", "-qw", "net.ipv4.conf.tunl0.rp_filter=0", "net.ipv4.conf.all.rp_filter=0"},
		{"ip", "addr", "add", TunVIP + "/32", "dev", "lo"},
		{"ip", "rule", "add", "from", TunVIP, "table", "100"},
	} {
		if _, err := Run(b, c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// ServeTCP serves addr in backend i as the DR VIP is served: the
// backend's name, then every line echoed.
func (l *Lab) ServeTCP(i int, addr string) error {
	_, err := l.serve(l.Backends[i], fmt.Sprintf("backend%d", i+1), addr)
	return err
}

// ServeUDP answers each datagram to addr in backend i with the backend's
// name, a space and the datagram, so a client sees which server answered.
func (l *Lab) ServeUDP(i int, addr string) error {
	name := fmt.Sprintf("backend%d", i+1)
	var pc net.PacketConn
	if err := l.Backends[i].Do(func() (err error) { pc, err = net.ListenPacket("udp4", addr); return err }); err != nil {
		return err
	}
	l.packetConns = append(l.packetConns, pc)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			reply := name + " " + strings.TrimSpace(string(buf[:n]))
			_, _ = pc.WriteTo([]byte(reply), from)
		}
	}()
	return nil
}

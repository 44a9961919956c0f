// Package sdnotify tells systemd about a service's state (sd_notify(3)):
// READY=1 for Type=notify units, STATUS= lines, STOPPING=1. It writes one
// datagram to the socket named by $NOTIFY_SOCKET and does nothing when the
// variable is unset. No privileges needed.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Notify sends the state lines ("READY=1", "STATUS=…") to systemd, if it
// is listening.
func Notify(lines ...string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // an abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(lines, "\n"))); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

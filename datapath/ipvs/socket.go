package ipvs

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
)

// socket is the seam under Client: what it needs of the kernel. The one
// implementation is a generic netlink socket (socket_linux.go); tests put
// a fake kernel behind it to check a batch's acknowledgement accounting.
type socket interface {
	// SendMessages sends msgs in one sendmsg.
	SendMessages(msgs []netlink.Message) error
	// Receive reads one datagram, waiting until the deadline. The slice
	// is valid until the next receive.
	Receive() ([]byte, error)
	// ReceiveQueued reads a datagram already queued, without waiting and
	// regardless of the deadline; false when there is none.
	ReceiveQueued() ([]byte, bool)
	SetDeadline(t time.Time) error
	Close() error
}

// sockInfo is what dialing learned: IPVS's family id, the socket's port
// id and the buffer sizes the kernel granted.
type sockInfo struct {
	family         uint16
	pid            uint32
	rcvBuf, sndBuf int
}

// Netlink protocol numbers (the same on every architecture; spelled here
// so the codec and the batch accounting build on any OS).
const (
	nlmsgHdrLen     = 16
	nlmsgError      = 2
	nlmsgDone       = 3
	nlmFAckTLVs     = 0x200
	nlmsgerrAttrMsg = 1
)

// appendMessages appends msgs to b as one datagram, each as netlink.Conn
// sends it: the header with the length padded to 4 bytes, the data, the
// padding.
func appendMessages(b []byte, msgs []netlink.Message) []byte {
	for _, m := range msgs {
		b = binary.NativeEndian.AppendUint32(b, uint32(nlmsgHdrLen+len(m.Data)+3)&^3)
		b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Type))
		b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Flags))
		b = binary.NativeEndian.AppendUint32(b, m.Header.Sequence)
		b = binary.NativeEndian.AppendUint32(b, m.Header.PID)
		b = append(b, m.Data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// nlMessage is one netlink message inside a datagram.
type nlMessage struct {
	typ   uint16
	flags uint16
	seq   uint32
	data  []byte
}

// eachMessage walks the netlink messages of a datagram.
func eachMessage(b []byte, fn func(m nlMessage) (bool, error)) (bool, error) {
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b))
		if l < nlmsgHdrLen || l > len(b) {
			return false, errMalformed
		}
		m := nlMessage{
			typ:   binary.NativeEndian.Uint16(b[4:]),
			flags: binary.NativeEndian.Uint16(b[6:]),
			seq:   binary.NativeEndian.Uint32(b[8:]),
			data:  b[nlmsgHdrLen:l],
		}
		done, err := fn(m)
		if done || err != nil {
			return done, err
		}
		next := (l + 3) &^ 3
		if next >= len(b) {
			break
		}
		b = b[next:]
	}
	return false, nil
}

// errorReport decodes an NLMSG_ERROR payload: the errno (0 for an ack) and
// the kernel's extended-ack message if any.
func errorReport(m nlMessage) error {
	if len(m.data) < 4 {
		return errMalformed
	}
	code := int32(binary.NativeEndian.Uint32(m.data))
	if code == 0 {
		return nil
	}
	errno := syscall.Errno(-code)
	// With NETLINK_CAP_ACK the echoed request is just its header; extended
	// ack attributes follow it.
	const echoed = 4 + nlmsgHdrLen
	if m.flags&nlmFAckTLVs != 0 && len(m.data) > echoed {
		var msg string
		_ = attrs(m.data[echoed:], func(typ uint16, v []byte) error {
			if typ == nlmsgerrAttrMsg {
				msg = getString(v)
			}
			return nil
		})
		if msg != "" {
			return fmt.Errorf("%w (%s)", errno, msg)
		}
	}
	return errno
}

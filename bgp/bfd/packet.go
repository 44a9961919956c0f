package bfd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// State is a session state as it goes on the wire (RFC 5880 §4.1).
type State uint8

// The four states.
const (
	AdminDown State = 0
	Down      State = 1
	Init      State = 2
	Up        State = 3
)

func (s State) String() string {
	switch s {
	case AdminDown:
		return "admin-down"
	case Down:
		return "down"
	case Init:
		return "init"
	case Up:
		return "up"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// Diag says why a session last left Up (RFC 5880 §4.1).
type Diag uint8

// The diagnostics this package sets or reports.
const (
	DiagNone              Diag = 0
	DiagDetectExpired     Diag = 1
	DiagEchoFailed        Diag = 2
	DiagNeighborDown      Diag = 3
	DiagForwardingReset   Diag = 4
	DiagPathDown          Diag = 5
	DiagConcatenatedDown  Diag = 6
	DiagAdminDown         Diag = 7
	DiagReverseConcatDown Diag = 8
)

var diagNames = [...]string{"none", "control detection time expired", "echo function failed",
	"neighbor signaled session down", "forwarding plane reset", "path down",
	"concatenated path down", "administratively down", "reverse concatenated path down"}

func (d Diag) String() string {
	if int(d) < len(diagNames) {
		return diagNames[d]
	}
	return fmt.Sprintf("diagnostic %d", uint8(d))
}

// packet is a BFD Control packet without authentication.
type packet struct {
	Diag               Diag
	State              State
	Poll               bool
	Final              bool
	ControlIndependent bool
	DetectMult         uint8
	MyDisc             uint32
	YourDisc           uint32
	DesiredMinTx       time.Duration
	RequiredMinRx      time.Duration
	RequiredMinEchoRx  time.Duration
}

const (
	headerLen      = 24
	version        = 1
	flagPoll       = 0x20
	flagFinal      = 0x10
	flagCPI        = 0x08
	flagAuth       = 0x04
	flagDemand     = 0x02
	flagMultipoint = 0x01
)

func (p packet) marshal() []byte {
	b := make([]byte, headerLen)
	b[0] = version<<5 | byte(p.Diag)&0x1f
	b[1] = byte(p.State) << 6
	if p.Poll {
		b[1] |= flagPoll
	}
	if p.Final {
		b[1] |= flagFinal
	}
	if p.ControlIndependent {
		b[1] |= flagCPI
	}
	b[2] = p.DetectMult
	b[3] = headerLen
	binary.BigEndian.PutUint32(b[4:], p.MyDisc)
	binary.BigEndian.PutUint32(b[8:], p.YourDisc)
	binary.BigEndian.PutUint32(b[12:], micros(p.DesiredMinTx))
	binary.BigEndian.PutUint32(b[16:], micros(p.RequiredMinRx))
	binary.BigEndian.PutUint32(b[20:], micros(p.RequiredMinEchoRx))
	return b
}

func micros(d time.Duration) uint32 {
	us := d.Microseconds()
	if us > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(us)
}

var (
	errShort   = errors.New("shorter than a BFD control packet")
	errVersion = errors.New("not BFD version 1")
	errLength  = errors.New("length field below 24 or beyond the datagram")
	errAuth    = errors.New("asks for authentication (not configured)")
	errMult    = errors.New("detect multiplier 0")
	errMulti   = errors.New("multipoint bit set")
	errMyDisc  = errors.New("my discriminator 0")
	errDemand  = errors.New("demand mode (not supported)")
)

// parse applies the checks of RFC 5880 §6.8.6 that need no session.
func parse(b []byte) (packet, error) {
	if len(b) < headerLen {
		return packet{}, errShort
	}
	if b[0]>>5 != version {
		return packet{}, errVersion
	}
	if n := int(b[3]); n < headerLen || n > len(b) {
		return packet{}, errLength
	}
	flags := b[1]
	p := packet{
		Diag: Diag(b[0] & 0x1f), State: State(flags >> 6),
		Poll: flags&flagPoll != 0, Final: flags&flagFinal != 0, ControlIndependent: flags&flagCPI != 0,
		DetectMult: b[2],
		MyDisc:     binary.BigEndian.Uint32(b[4:]), YourDisc: binary.BigEndian.Uint32(b[8:]),
		DesiredMinTx:      time.Duration(binary.BigEndian.Uint32(b[12:])) * time.Microsecond,
		RequiredMinRx:     time.Duration(binary.BigEndian.Uint32(b[16:])) * time.Microsecond,
		RequiredMinEchoRx: time.Duration(binary.BigEndian.Uint32(b[20:])) * time.Microsecond,
	}
	switch {
	case flags&flagAuth != 0:
		return packet{}, errAuth
	case p.DetectMult == 0:
		return packet{}, errMult
	case flags&flagMultipoint != 0:
		return packet{}, errMulti
	case p.MyDisc == 0:
		return packet{}, errMyDisc
	case flags&flagDemand != 0:
		return packet{}, errDemand
	}
	return p, nil
}

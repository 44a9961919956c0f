package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
)

// Generic netlink commands and attributes of the IPVS family (linux/ip_vs.h).
const (
	genlName    = "IPVS"
	genlVersion = 1

	cmdNewService = 1
	cmdSetService = 2
	cmdDelService = 3
	cmdGetService = 4
	cmdNewDest    = 5
	cmdSetDest    = 6
	cmdDelDest    = 7
	cmdGetDest    = 8
	cmdSetConfig  = 12
	cmdGetConfig  = 13
	cmdGetInfo    = 15
	cmdZero       = 16
	cmdFlush      = 17

	attrCmdService       = 1
	attrCmdDest          = 2
	attrCmdTimeoutTCP    = 4
	attrCmdTimeoutTCPFin = 5
	attrCmdTimeoutUDP    = 6

	attrSvcAF        = 1
	attrSvcProtocol  = 2
	attrSvcAddr      = 3
	attrSvcPort      = 4
	attrSvcFWMark    = 5
	attrSvcSchedName = 6
	attrSvcFlags     = 7
	attrSvcTimeout   = 8
	attrSvcNetmask   = 9
	attrSvcStats     = 10
	attrSvcPEName    = 11
	attrSvcStats64   = 12

	attrDestAddr         = 1
	attrDestPort         = 2
	attrDestFwdMethod    = 3
	attrDestWeight       = 4
	attrDestUThresh      = 5
	attrDestLThresh      = 6
	attrDestActiveConns  = 7
	attrDestInactConns   = 8
	attrDestPersistConns = 9
	attrDestStats        = 10
	attrDestAddrFamily   = 11
	attrDestStats64      = 12
	attrDestTunType      = 13
	attrDestTunPort      = 14
	attrDestTunFlags     = 15

	attrStatsConns    = 1
	attrStatsInPkts   = 2
	attrStatsOutPkts  = 3
	attrStatsInBytes  = 4
	attrStatsOutBytes = 5
	attrStatsCPS      = 6
	attrStatsInPPS    = 7
	attrStatsOutPPS   = 8
	attrStatsInBPS    = 9
	attrStatsOutBPS   = 10

	attrInfoVersion     = 1
	attrInfoConnTabSize = 2

	nlaNested   = 0x8000
	nlaTypeMask = 0x3fff
	nlaHdrLen   = 4
	genlHdrLen  = 4
)

// errMalformed marks a kernel message this package cannot decode.
var errMalformed = errors.New("malformed IPVS netlink message")

// encoder appends netlink attributes to a buffer.
type encoder struct{ b []byte }

func (e *encoder) genlHeader(cmd uint8) {
	e.b = append(e.b, cmd, genlVersion, 0, 0)
}

func (e *encoder) attr(typ uint16, payload []byte) {
	e.b = binary.NativeEndian.AppendUint16(e.b, uint16(nlaHdrLen+len(payload)))
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = append(e.b, payload...)
	e.pad()
}

func (e *encoder) pad() {
	for len(e.b)%4 != 0 {
		e.b = append(e.b, 0)
	}
}

func (e *encoder) u8(typ uint16, v uint8) { e.attr(typ, []byte{v}) }

func (e *encoder) u16(typ, v uint16) {
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], v)
	e.attr(typ, p[:])
}

func (e *encoder) be16(typ, v uint16) {
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], v)
	e.attr(typ, p[:])
}

func (e *encoder) u32(typ uint16, v uint32) {
	var p [4]byte
	binary.NativeEndian.PutUint32(p[:], v)
	e.attr(typ, p[:])
}

func (e *encoder) str(typ uint16, s string) {
	e.b = binary.NativeEndian.AppendUint16(e.b, uint16(nlaHdrLen+len(s)+1))
	e.b = binary.NativeEndian.AppendUint16(e.b, typ)
	e.b = append(e.b, s...)
	e.b = append(e.b, 0)
	e.pad()
}

// nest starts a nested attribute; end closes it.
func (e *encoder) nest(typ uint16) int {
	off := len(e.b)
	e.b = append(e.b, 0, 0, 0, 0)
	binary.NativeEndian.PutUint16(e.b[off+2:], typ|nlaNested)
	return off
}

func (e *encoder) end(off int) {
	binary.NativeEndian.PutUint16(e.b[off:], uint16(len(e.b)-off))
}

// serviceKey encodes the identity attributes inside IPVS_CMD_ATTR_SERVICE.
func (e *encoder) serviceKey(k ServiceKey) {
	if k.FWMark != 0 {
		e.u16(attrSvcAF, uint16(k.Family))
		e.u32(attrSvcFWMark, k.FWMark)
		return
	}
	a := k.Address.Unmap()
	e.u16(attrSvcAF, uint16(familyOf(a)))
	e.u16(attrSvcProtocol, uint16(k.Protocol))
	e.attr(attrSvcAddr, a.AsSlice())
	e.be16(attrSvcPort, k.Port)
}

// service encodes IPVS_CMD_ATTR_SERVICE; a new or changed service must carry
// scheduler, flags, timeout and netmask or the kernel answers EINVAL.
func (e *encoder) service(s Service, full bool) {
	n := e.nest(attrCmdService)
	e.serviceKey(s.Key)
	if full {
		c := s.Config
		e.str(attrSvcSchedName, c.Scheduler)
		if c.PersistenceEngine != "" {
			e.str(attrSvcPEName, c.PersistenceEngine)
		}
		var flags [8]byte
		binary.NativeEndian.PutUint32(flags[0:], uint32(c.Flags&^flagHashed))
		binary.NativeEndian.PutUint32(flags[4:], ^uint32(0))
		e.attr(attrSvcFlags, flags[:])
		e.u32(attrSvcTimeout, c.Timeout)
		e.netmask(s.Key, c.NetmaskBits)
	}
	e.end(n)
}

// netmask writes the persistence netmask the way the kernel reads it: an IPv4
// mask in network byte order, an IPv6 prefix length as a plain integer.
func (e *encoder) netmask(k ServiceKey, prefixBits uint8) {
	fam := k.Family
	if k.FWMark == 0 {
		fam = familyOf(k.Address.Unmap())
	}
	if fam == IPv6 {
		if prefixBits == 0 || prefixBits > 128 {
			prefixBits = 128
		}
		e.u32(attrSvcNetmask, uint32(prefixBits))
		return
	}
	if prefixBits == 0 || prefixBits > 32 {
		prefixBits = 32
	}
	var m [4]byte
	binary.BigEndian.PutUint32(m[:], ^uint32(0)<<(32-prefixBits))
	e.attr(attrSvcNetmask, m[:])
}

// destination encodes IPVS_CMD_ATTR_DEST.
func (e *encoder) destination(d Destination, full bool) {
	n := e.nest(attrCmdDest)
	a := d.Key.Address.Unmap()
	e.u16(attrDestAddrFamily, uint16(familyOf(a)))
	e.attr(attrDestAddr, a.AsSlice())
	e.be16(attrDestPort, d.Key.Port)
	if full {
		c := d.Config
		e.u32(attrDestFwdMethod, uint32(c.Forward&forwardMask))
		e.u32(attrDestWeight, c.Weight)
		e.u32(attrDestUThresh, c.UpperThreshold)
		e.u32(attrDestLThresh, c.LowerThreshold)
		if c.Forward == Tunnel {
			e.u8(attrDestTunType, uint8(c.TunnelType))
			e.be16(attrDestTunPort, c.TunnelPort)
			e.u16(attrDestTunFlags, uint16(c.TunnelFlags))
		}
	}
	e.end(n)
}

// encodeOp appends the generic netlink payload (genl header and attributes)
// of one operation.
func encodeOp(b []byte, op Op) ([]byte, uint8, error) {
	e := encoder{b: b}
	var cmd uint8
	switch op.Kind {
	case OpAddService:
		cmd = cmdNewService
	case OpUpdateService:
		cmd = cmdSetService
	case OpDeleteService:
		cmd = cmdDelService
	case OpAddDestination:
		cmd = cmdNewDest
	case OpUpdateDestination:
		cmd = cmdSetDest
	case OpDeleteDestination:
		cmd = cmdDelDest
	default:
		return b, 0, fmt.Errorf("unknown operation kind %d", op.Kind)
	}
	if err := checkServiceKey(op.Service.Key); err != nil {
		return b, 0, err
	}
	e.genlHeader(cmd)
	switch op.Kind {
	case OpAddService, OpUpdateService:
		e.service(op.Service, true)
	case OpDeleteService:
		e.service(op.Service, false)
	default:
		if !op.Destination.Key.Address.IsValid() {
			return b, 0, errors.New("destination address is not set")
		}
		e.service(op.Service, false)
		e.destination(op.Destination, op.Kind != OpDeleteDestination)
	}
	return e.b, cmd, nil
}

func checkServiceKey(k ServiceKey) error {
	if k.FWMark != 0 {
		if k.Family != IPv4 && k.Family != IPv6 {
			return fmt.Errorf("fwmark service %d: family must be ipv4 or ipv6, got %s", k.FWMark, k.Family)
		}
		return nil
	}
	if !k.Address.IsValid() {
		return errors.New("service has neither an address nor a firewall mark")
	}
	if k.Protocol == 0 {
		return fmt.Errorf("service %s: protocol is not set", k)
	}
	return nil
}

// attrs iterates over the netlink attributes in b. It never panics: a
// truncated or oversized attribute ends the walk with errMalformed.
func attrs(b []byte, fn func(typ uint16, v []byte) error) error {
	for len(b) > 0 {
		if len(b) < nlaHdrLen {
			return errMalformed
		}
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask
		if l < nlaHdrLen || l > len(b) {
			return errMalformed
		}
		if err := fn(typ, b[nlaHdrLen:l]); err != nil {
			return err
		}
		next := (l + 3) &^ 3
		if next >= len(b) {
			return nil
		}
		b = b[next:]
	}
	return nil
}

func getU16(v []byte) (uint16, error) {
	if len(v) < 2 {
		return 0, errMalformed
	}
	return binary.NativeEndian.Uint16(v), nil
}

func getBE16(v []byte) (uint16, error) {
	if len(v) < 2 {
		return 0, errMalformed
	}
	return binary.BigEndian.Uint16(v), nil
}

func getU32(v []byte) (uint32, error) {
	if len(v) < 4 {
		return 0, errMalformed
	}
	return binary.NativeEndian.Uint32(v), nil
}

func getU64(v []byte) (uint64, error) {
	if len(v) < 8 {
		return 0, errMalformed
	}
	return binary.NativeEndian.Uint64(v), nil
}

func getString(v []byte) string {
	for i, c := range v {
		if c == 0 {
			return string(v[:i])
		}
	}
	return string(v)
}

// getAddr reads an IPVS address attribute (a 16-byte union nf_inet_addr).
func getAddr(fam Family, v []byte) (netip.Addr, error) {
	switch {
	case fam == IPv4 && len(v) >= 4:
		return netip.AddrFrom4([4]byte(v[:4])), nil
	case fam == IPv6 && len(v) >= 16:
		return netip.AddrFrom16([16]byte(v[:16])), nil
	}
	return netip.Addr{}, errMalformed
}

// genlPayload strips the generic netlink header and returns the attributes.
func genlPayload(msg []byte) ([]byte, error) {
	if len(msg) < genlHdrLen {
		return nil, errMalformed
	}
	return msg[genlHdrLen:], nil
}

// decodeService decodes a GET_SERVICE reply (genl header and attributes).
// withStats false skips the counters for the config-only Table read.
func decodeService(msg []byte, withStats bool) (ServiceStatus, error) {
	var s ServiceStatus
	payload, err := genlPayload(msg)
	if err != nil {
		return s, err
	}
	var nested []byte
	if err := attrs(payload, func(typ uint16, v []byte) error {
		if typ == attrCmdService {
			nested = v
		}
		return nil
	}); err != nil {
		return s, err
	}
	if nested == nil {
		return s, fmt.Errorf("%w: no service attribute", errMalformed)
	}
	var addr, netmask []byte
	var haveNetmask bool
	err = attrs(nested, func(typ uint16, v []byte) error {
		var err error
		switch typ {
		case attrSvcAF:
			var f uint16
			f, err = getU16(v)
			s.Key.Family = Family(f)
		case attrSvcProtocol:
			var p uint16
			p, err = getU16(v)
			s.Key.Protocol = Protocol(p)
		case attrSvcAddr:
			addr = v
		case attrSvcPort:
			s.Key.Port, err = getBE16(v)
		case attrSvcFWMark:
			s.Key.FWMark, err = getU32(v)
		case attrSvcSchedName:
			s.Config.Scheduler = getString(v)
		case attrSvcPEName:
			s.Config.PersistenceEngine = getString(v)
		case attrSvcFlags:
			var f uint32
			f, err = getU32(v)
			s.Config.Flags = ServiceFlags(f) &^ flagHashed
		case attrSvcTimeout:
			s.Config.Timeout, err = getU32(v)
		case attrSvcNetmask:
			netmask, haveNetmask = v, true
		case attrSvcStats64:
			if withStats {
				s.Stats, err = decodeStats(v)
			}
		}
		return err
	})
	if err != nil {
		return s, err
	}
	if s.Key.Family != IPv4 && s.Key.Family != IPv6 {
		return s, fmt.Errorf("%w: service family %d", errMalformed, s.Key.Family)
	}
	if s.Key.FWMark != 0 {
		// The kernel keeps TCP internally for fwmark services; the key is
		// the mark and family alone.
		s.Key = ServiceKey{Family: s.Key.Family, FWMark: s.Key.FWMark}
	} else if s.Key.Address, err = getAddr(s.Key.Family, addr); err != nil {
		return s, fmt.Errorf("service address: %w", err)
	}
	if haveNetmask {
		if s.Config.NetmaskBits, err = decodeNetmask(s.Key.Family, netmask); err != nil {
			return s, err
		}
	}
	return s, nil
}

// decodeNetmask is the inverse of encoder.netmask; the full-length mask
// decodes to 0, the documented default. A non-contiguous IPv4 mask (which
// only other tools can set) decodes to its leading ones.
func decodeNetmask(fam Family, v []byte) (uint8, error) {
	if len(v) < 4 {
		return 0, errMalformed
	}
	if fam == IPv6 {
		n := binary.NativeEndian.Uint32(v)
		if n >= 128 {
			return 0, nil
		}
		return uint8(n), nil
	}
	n := bits.LeadingZeros32(^binary.BigEndian.Uint32(v))
	if n == 32 {
		return 0, nil
	}
	return uint8(n), nil
}

// decodeDestination decodes a GET_DEST reply.
func decodeDestination(msg []byte, svcFamily Family, withStats bool) (DestinationStatus, error) {
	var d DestinationStatus
	payload, err := genlPayload(msg)
	if err != nil {
		return d, err
	}
	var nested []byte
	if err := attrs(payload, func(typ uint16, v []byte) error {
		if typ == attrCmdDest {
			nested = v
		}
		return nil
	}); err != nil {
		return d, err
	}
	if nested == nil {
		return d, fmt.Errorf("%w: no destination attribute", errMalformed)
	}
	fam := svcFamily
	var addr []byte
	err = attrs(nested, func(typ uint16, v []byte) error {
		var err error
		switch typ {
		case attrDestAddr:
			addr = v
		case attrDestAddrFamily:
			var f uint16
			f, err = getU16(v)
			fam = Family(f)
		case attrDestPort:
			d.Key.Port, err = getBE16(v)
		case attrDestFwdMethod:
			var m uint32
			m, err = getU32(v)
			d.Config.Forward = ForwardMethod(m) & forwardMask
		case attrDestWeight:
			d.Config.Weight, err = getU32(v)
		case attrDestUThresh:
			d.Config.UpperThreshold, err = getU32(v)
		case attrDestLThresh:
			d.Config.LowerThreshold, err = getU32(v)
		case attrDestTunType:
			if len(v) < 1 {
				return errMalformed
			}
			d.Config.TunnelType = TunnelType(v[0])
		case attrDestTunPort:
			d.Config.TunnelPort, err = getBE16(v)
		case attrDestTunFlags:
			var f uint16
			f, err = getU16(v)
			d.Config.TunnelFlags = TunnelFlags(f)
		case attrDestActiveConns:
			d.ActiveConnections, err = getU32(v)
		case attrDestInactConns:
			d.InactiveConnections, err = getU32(v)
		case attrDestPersistConns:
			d.PersistentConnections, err = getU32(v)
		case attrDestStats64:
			if withStats {
				d.Stats, err = decodeStats(v)
			}
		}
		return err
	})
	if err != nil {
		return d, err
	}
	if d.Key.Address, err = getAddr(fam, addr); err != nil {
		return d, fmt.Errorf("destination address: %w", err)
	}
	if d.Config.Forward != Tunnel {
		// The kernel reports tunnel fields for every destination; they only
		// mean something for tunnels, and Diff must not see them elsewhere.
		d.Config.TunnelType, d.Config.TunnelPort, d.Config.TunnelFlags = 0, 0, 0
	}
	return d, nil
}

func decodeStats(b []byte) (Stats, error) {
	var s Stats
	err := attrs(b, func(typ uint16, v []byte) error {
		var p *uint64
		switch typ {
		case attrStatsConns:
			p = &s.Connections
		case attrStatsInPkts:
			p = &s.InPackets
		case attrStatsOutPkts:
			p = &s.OutPackets
		case attrStatsInBytes:
			p = &s.InBytes
		case attrStatsOutBytes:
			p = &s.OutBytes
		case attrStatsCPS:
			p = &s.CPS
		case attrStatsInPPS:
			p = &s.InPPS
		case attrStatsOutPPS:
			p = &s.OutPPS
		case attrStatsInBPS:
			p = &s.InBPS
		case attrStatsOutBPS:
			p = &s.OutBPS
		default:
			return nil
		}
		var err error
		*p, err = getU64(v)
		return err
	})
	return s, err
}

func decodeInfo(msg []byte) (Info, error) {
	var in Info
	payload, err := genlPayload(msg)
	if err != nil {
		return in, err
	}
	err = attrs(payload, func(typ uint16, v []byte) error {
		switch typ {
		case attrInfoVersion:
			ver, err := getU32(v)
			if err != nil {
				return err
			}
			in.Version = fmt.Sprintf("%d.%d.%d", ver>>16&0xff, ver>>8&0xff, ver&0xff)
		case attrInfoConnTabSize:
			n, err := getU32(v)
			if err != nil {
				return err
			}
			in.ConnTableSize = n
		}
		return nil
	})
	return in, err
}

func decodeTimeouts(msg []byte) (Timeouts, error) {
	var t Timeouts
	payload, err := genlPayload(msg)
	if err != nil {
		return t, err
	}
	err = attrs(payload, func(typ uint16, v []byte) error {
		var p *uint32
		switch typ {
		case attrCmdTimeoutTCP:
			p = &t.TCP
		case attrCmdTimeoutTCPFin:
			p = &t.TCPFin
		case attrCmdTimeoutUDP:
			p = &t.UDP
		default:
			return nil
		}
		var err error
		*p, err = getU32(v)
		return err
	})
	return t, err
}

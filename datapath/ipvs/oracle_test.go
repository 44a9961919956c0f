package ipvs

import (
	"bufio"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// ipvsadmTable reads a namespace's table with ipvsadm, an independent
// implementation: `-Sn` for the configuration and `-Ln --thresholds` for
// the connection thresholds, which -S does not print.
func ipvsadmTable(t *testing.T, ns *testenv.NetNS) []VirtualServer {
	t.Helper()
	save := ns.Run(t, "ipvsadm", "-Sn")
	var out []VirtualServer
	index := map[ServiceKey]int{}
	sc := bufio.NewScanner(strings.NewReader(save))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		switch f[0] {
		case "-A":
			s, err := parseSaveService(f[1:])
			if err != nil {
				t.Fatalf("ipvsadm -Sn line %q: %v", line, err)
			}
			index[s.Key] = len(out)
			out = append(out, VirtualServer{Service: s})
		case "-a":
			key, d, err := parseSaveDestination(f[1:])
			if err != nil {
				t.Fatalf("ipvsadm -Sn line %q: %v", line, err)
			}
			i, ok := index[key]
			if !ok {
				t.Fatalf("ipvsadm -Sn: destination before its service: %q", line)
			}
			out[i].Destinations = append(out[i].Destinations, d)
		default:
			t.Fatalf("ipvsadm -Sn: unexpected line %q", line)
		}
	}
	// Thresholds.
	list := ns.Run(t, "ipvsadm", "-Ln", "--thresholds")
	var cur = -1
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "TCP", "UDP", "SCTP":
			ap, err := netip.ParseAddrPort(f[1])
			if err != nil {
				t.Fatalf("ipvsadm -Ln: %q: %v", line, err)
			}
			p, _ := ParseProtocol(f[0])
			cur = index[ServiceKey{Protocol: p, Address: ap.Addr(), Port: ap.Port()}.Canonical()]
		case "FWM":
			mark, _ := strconv.ParseUint(f[1], 10, 32)
			fam := IPv4
			if len(f) > 2 && f[2] == "IPv6" {
				fam = IPv6
			}
			cur = index[ServiceKey{Family: fam, FWMark: uint32(mark)}]
		case "->":
			if cur < 0 || len(f) < 4 {
				continue // header line
			}
			ap, err := netip.ParseAddrPort(f[1])
			if err != nil {
				continue
			}
			uth, _ := strconv.ParseUint(f[2], 10, 32)
			lth, _ := strconv.ParseUint(f[3], 10, 32)
			for j := range out[cur].Destinations {
				d := &out[cur].Destinations[j]
				if d.Key.Address == ap.Addr() && d.Key.Port == ap.Port() {
					d.Config.UpperThreshold, d.Config.LowerThreshold = uint32(uth), uint32(lth)
				}
			}
		}
	}
	return out
}

func parseSaveKey(f []string) (ServiceKey, []string, error) {
	var k ServiceKey
	fam := IPv4
	var rest []string
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case "-t", "-u", "--sctp-service":
			if i+1 >= len(f) {
				return k, nil, fmt.Errorf("%s without address", f[i])
			}
			ap, err := netip.ParseAddrPort(f[i+1])
			if err != nil {
				return k, nil, err
			}
			k.Protocol = map[string]Protocol{"-t": TCP, "-u": UDP, "--sctp-service": SCTP}[f[i]]
			k.Address, k.Port = ap.Addr(), ap.Port()
			i++
		case "-f":
			mark, err := strconv.ParseUint(f[i+1], 10, 32)
			if err != nil {
				return k, nil, err
			}
			k.FWMark = uint32(mark)
			i++
		case "-6":
			fam = IPv6
		default:
			rest = append(rest, f[i])
		}
	}
	if k.FWMark != 0 {
		k.Family = fam
	}
	return k.Canonical(), rest, nil
}

func parseSaveService(f []string) (Service, error) {
	key, rest, err := parseSaveKey(f)
	if err != nil {
		return Service{}, err
	}
	s := Service{Key: key}
	for i := 0; i < len(rest); i++ {
		arg := func() string {
			if i+1 < len(rest) {
				i++
				return rest[i]
			}
			return ""
		}
		switch rest[i] {
		case "-s":
			s.Config.Scheduler = arg()
		case "-p":
			s.Config.Flags |= FlagPersistent
			v, err := strconv.ParseUint(arg(), 10, 32)
			if err != nil {
				return s, err
			}
			s.Config.Timeout = uint32(v)
		case "-M":
			m := arg()
			if a, err := netip.ParseAddr(m); err == nil && a.Is4() {
				b := a.As4()
				bits := 0
				for _, x := range b {
					for x&0x80 != 0 {
						bits++
						x <<= 1
					}
				}
				s.Config.NetmaskBits = uint8(bits)
			} else {
				v, err := strconv.ParseUint(m, 10, 8)
				if err != nil {
					return s, err
				}
				s.Config.NetmaskBits = uint8(v)
			}
		case "--pe":
			s.Config.PersistenceEngine = arg()
		case "-b":
			for _, name := range strings.Split(arg(), ",") {
				fl, err := ParseServiceFlag(name)
				if err != nil {
					return s, err
				}
				s.Config.Flags |= fl
			}
		case "-o":
			s.Config.Flags |= FlagOnePacket
		default:
			return s, fmt.Errorf("unknown service option %q", rest[i])
		}
	}
	s.Config = normalServiceConfig(s.Key, s.Config)
	return s, nil
}

func parseSaveDestination(f []string) (ServiceKey, Destination, error) {
	key, rest, err := parseSaveKey(f)
	var d Destination
	if err != nil {
		return key, d, err
	}
	for i := 0; i < len(rest); i++ {
		arg := func() string {
			if i+1 < len(rest) {
				i++
				return rest[i]
			}
			return ""
		}
		switch rest[i] {
		case "-r":
			ap, err := netip.ParseAddrPort(arg())
			if err != nil {
				return key, d, err
			}
			d.Key = DestinationKey{Address: ap.Addr(), Port: ap.Port()}
		case "-g":
			d.Config.Forward = DirectRoute
		case "-m":
			d.Config.Forward = Masquerade
		case "-i":
			d.Config.Forward = Tunnel
		case "-w":
			v, err := strconv.ParseUint(arg(), 10, 32)
			if err != nil {
				return key, d, err
			}
			d.Config.Weight = uint32(v)
		case "--tun-type":
			tt := map[string]TunnelType{"ipip": TunnelIPIP, "gue": TunnelGUE, "gre": TunnelGRE}
			v, ok := tt[arg()]
			if !ok {
				return key, d, fmt.Errorf("tunnel type %q", rest[i])
			}
			d.Config.TunnelType = v
		case "--tun-port":
			v, err := strconv.ParseUint(arg(), 10, 16)
			if err != nil {
				return key, d, err
			}
			d.Config.TunnelPort = uint16(v)
		case "--tun-csum":
			d.Config.TunnelFlags |= TunnelChecksum
		case "--tun-remcsum":
			d.Config.TunnelFlags |= TunnelRemoteChecksum
		case "--tun-nocsum":
		default:
			return key, d, fmt.Errorf("unknown destination option %q", rest[i])
		}
	}
	return key, d, nil
}

// normalTable sorts a table and puts every object in canonical form, so
// that two reads of the same state compare equal.
func normalTable(vs []VirtualServer) []VirtualServer {
	out := make([]VirtualServer, len(vs))
	for i, v := range vs {
		k := v.Service.Key.Canonical()
		out[i].Service = Service{Key: k, Config: normalServiceConfig(k, v.Service.Config)}
		out[i].Destinations = sortedDestinations(v.Destinations)
		if len(out[i].Destinations) == 0 {
			out[i].Destinations = nil
		}
	}
	slices.SortFunc(out, func(a, b VirtualServer) int { return compareServiceKeys(a.Service.Key, b.Service.Key) })
	return out
}

// saveFormat writes a table the way `ipvsadm -R` reads it.
func saveFormat(vs []VirtualServer) string {
	var b strings.Builder
	key := func(k ServiceKey) string {
		if k.FWMark != 0 {
			if k.Family == IPv6 {
				return fmt.Sprintf("-f %d -6", k.FWMark)
			}
			return fmt.Sprintf("-f %d", k.FWMark)
		}
		flag := map[Protocol]string{TCP: "-t", UDP: "-u", SCTP: "--sctp-service"}[k.Protocol]
		return flag + " " + netip.AddrPortFrom(k.Address, k.Port).String()
	}
	for _, v := range vs {
		s := v.Service
		fmt.Fprintf(&b, "-A %s -s %s", key(s.Key), s.Config.Scheduler)
		if s.Config.Flags&FlagPersistent != 0 {
			fmt.Fprintf(&b, " -p %d", s.Config.Timeout)
		}
		fmt.Fprintln(&b)
		for _, d := range v.Destinations {
			fwd := map[ForwardMethod]string{DirectRoute: "-g", Masquerade: "-m", Tunnel: "-i"}[d.Config.Forward]
			fmt.Fprintf(&b, "-a %s -r %s %s -w %d\n", key(s.Key), netip.AddrPortFrom(d.Key.Address, d.Key.Port), fwd, d.Config.Weight)
		}
	}
	return b.String()
}

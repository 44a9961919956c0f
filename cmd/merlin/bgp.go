package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/merlin-ipvs/merlin/bgp"
	"github.com/merlin-ipvs/merlin/bgp/bfd"
)

// bgpFile is the `bgp:` section of the configuration file.
type bgpFile struct {
	LocalAS         uint32     `json:"local_as"`
	RouterID        string     `json:"router_id"`
	ListenPort      int        `json:"listen_port"`
	ListenAddresses []string   `json:"listen_addresses"`
	NextHopIPv6     string     `json:"next_hop_ipv6"`
	Peers           []peerFile `json:"peers"`
}

// peerFile is one peer, in the file or as a -bgp-peer flag
// (key=value,key=value with the same keys).
type peerFile struct {
	Address            string   `json:"address"`
	AS                 uint32   `json:"as"`
	Port               int      `json:"port"`
	LocalAddress       string   `json:"local_address"`
	PasswordFile       string   `json:"password_file"`
	HoldTime           string   `json:"hold_time"`
	KeepaliveTime      string   `json:"keepalive_time"`
	ConnectRetry       string   `json:"connect_retry"`
	MultihopTTL        int      `json:"multihop_ttl"`
	Passive            bool     `json:"passive"`
	GracefulRestart    string   `json:"graceful_restart"`
	Families           []string `json:"families"`
	MaxPrefixes        uint32   `json:"max_prefixes"`
	MaxPrefixesRestart string   `json:"max_prefixes_restart"`
	BFD                bool     `json:"bfd"`
	BFDMinTx           string   `json:"bfd_min_tx"`
	BFDMinRx           string   `json:"bfd_min_rx"`
	BFDMultiplier      uint8    `json:"bfd_multiplier"`
}

// peerFlags collects repeated -bgp-peer flags.
type peerFlags []peerFile

func (p *peerFlags) String() string { return fmt.Sprintf("%d peers", len(*p)) }

// Set reads address=IP,as=N[,key=value...]; families are joined with '+'.
func (p *peerFlags) Set(v string) error {
	m := map[string]any{}
	for _, kv := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(kv, "=")
		k = strings.ReplaceAll(strings.TrimSpace(k), "-", "_")
		switch {
		case !ok && (k == "passive" || k == "bfd"):
			m[k] = true
		case !ok:
			return fmt.Errorf("%q: want key=value", kv)
		case k == "families":
			m[k] = strings.Split(val, "+")
		case k == "as" || k == "port" || k == "multihop_ttl" || k == "max_prefixes" || k == "bfd_multiplier":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return fmt.Errorf("%s %q: want a number", k, shorten(val))
			}
			m[k] = n
		default:
			m[k] = val
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var pf peerFile
	if err := yaml.UnmarshalStrict(raw, &pf); err != nil {
		return err
	}
	*p = append(*p, pf)
	return nil
}

// bgpConfig checks the node's own BGP settings at start (the file section
// and the flags); zero local AS and no peers: none. Without a local AS the
// peers wait for the cluster's (effectiveBGP).
func bgpConfig(f bgpFile) (*bgp.Config, error) {
	if f.LocalAS == 0 && len(f.Peers) == 0 {
		return nil, nil
	}
	c, err := bgpGlobal(f)
	if err != nil {
		return nil, err
	}
	for i, pf := range f.Peers {
		p, err := pf.peer()
		if err != nil {
			return nil, fmt.Errorf("bgp.peers[%d]: %w", i, err)
		}
		c.Peers = append(c.Peers, p)
	}
	if c.LocalAS == 0 {
		return &c, nil
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// bgpGlobal reads the global settings of a file section.
func bgpGlobal(f bgpFile) (bgp.Config, error) {
	c := bgp.Config{LocalAS: f.LocalAS, ListenPort: f.ListenPort}
	var err error
	if c.RouterID, err = optionalAddr("bgp.router_id", f.RouterID); err != nil {
		return c, err
	}
	if c.NextHopIPv6, err = optionalAddr("bgp.next_hop_ipv6", f.NextHopIPv6); err != nil {
		return c, err
	}
	for i, s := range f.ListenAddresses {
		a, err := optionalAddr(fmt.Sprintf("bgp.listen_addresses[%d]", i), s)
		if err != nil {
			return c, err
		}
		c.ListenAddresses = append(c.ListenAddresses, a)
	}
	return c, nil
}

func (pf peerFile) peer() (bgp.Peer, error) {
	p := bgp.Peer{AS: pf.AS, Port: pf.Port, MultihopTTL: pf.MultihopTTL, Passive: pf.Passive, MaxPrefixes: pf.MaxPrefixes}
	var err error
	if p.Address, err = optionalAddr("address", pf.Address); err != nil {
		return p, err
	}
	if p.Address.IsLoopback() {
		return p, fmt.Errorf("address %s: a loopback address is this machine, not a router", p.Address)
	}
	if p.Local, err = optionalAddr("local_address", pf.LocalAddress); err != nil {
		return p, err
	}
	for _, d := range []struct {
		name string
		in   string
		out  *time.Duration
	}{{"hold_time", pf.HoldTime, &p.HoldTime}, {"keepalive_time", pf.KeepaliveTime, &p.KeepaliveTime},
		{"connect_retry", pf.ConnectRetry, &p.ConnectRetry}, {"graceful_restart", pf.GracefulRestart, &p.GracefulRestart},
		{"max_prefixes_restart", pf.MaxPrefixesRestart, &p.MaxPrefixesRestart}} {
		if d.in == "" {
			continue
		}
		if *d.out, err = time.ParseDuration(d.in); err != nil {
			return p, fmt.Errorf("%s %q: want a duration such as 90s", d.name, shorten(d.in))
		}
	}
	if p.BFD, err = pf.bfd(); err != nil {
		return p, err
	}
	for _, f := range pf.Families {
		p.Families = append(p.Families, bgp.Family(f))
	}
	if pf.PasswordFile != "" {
		if p.Password, err = readPassword(pf.PasswordFile); err != nil {
			return p, fmt.Errorf("password_file: %w", err)
		}
	}
	return p, nil
}

// bfd reads the BFD settings: timers given without bfd are a mistake.
func (pf peerFile) bfd() (*bfd.Config, error) {
	if !pf.BFD {
		if pf.BFDMinTx != "" || pf.BFDMinRx != "" || pf.BFDMultiplier != 0 {
			return nil, errors.New("bfd_min_tx, bfd_min_rx, bfd_multiplier: given with BFD off (add bfd: true, or bfd in -bgp-peer)")
		}
		return nil, nil
	}
	c := &bfd.Config{Multiplier: pf.BFDMultiplier}
	for _, d := range []struct {
		name string
		in   string
		out  *time.Duration
	}{{"bfd_min_tx", pf.BFDMinTx, &c.MinTx}, {"bfd_min_rx", pf.BFDMinRx, &c.MinRx}} {
		if d.in == "" {
			continue
		}
		var err error
		if *d.out, err = time.ParseDuration(d.in); err != nil {
			return nil, fmt.Errorf("%s %q: want a duration such as 300ms", d.name, shorten(d.in))
		}
	}
	return c, nil
}

func optionalAddr(field, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, fmt.Errorf("%s %q: want an IP address", field, shorten(s))
	}
	return a, nil
}

// readPassword reads a TCP-MD5 key: the file's first line. A file others
// can read is refused: the key lets anyone who has it inject routes.
func readPassword(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %v): chmod o-rwx", path, fi.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	key, _, _ := strings.Cut(string(raw), "\n")
	key = strings.TrimRight(key, "\r")
	if key == "" {
		return "", errors.New(path + " is empty")
	}
	return key, nil
}

// mergeBGPFlags lays the -bgp-* flags given on the command line over the
// file's section; -bgp-peer flags replace the file's peers.
func mergeBGPFlags(fs *flag.FlagSet, dst *bgpFile, flags bgpFile, peers peerFlags) {
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "bgp-local-as":
			dst.LocalAS = flags.LocalAS
		case "bgp-router-id":
			dst.RouterID = flags.RouterID
		case "bgp-listen-port":
			dst.ListenPort = flags.ListenPort
		case "bgp-next-hop-ipv6":
			dst.NextHopIPv6 = flags.NextHopIPv6
		}
	})
	if len(peers) > 0 {
		dst.Peers = peers
	}
}

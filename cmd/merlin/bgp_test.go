package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBGPConfigFromFileAndFlags(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "bgp.key")
	if err := os.WriteFile(key, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "merlin.yaml")
	if err := os.WriteFile(cfg, []byte(`node: lb1
bgp:
  local_as: 65001
  router_id: 192.0.2.1
  peers:
    - address: 192.0.2.254
      as: 65000
      password_file: `+key+`
      hold_time: 9s
      graceful_restart: 120s
      max_prefixes: 10
      max_prefixes_restart: 5m
      bfd: true
      bfd_min_tx: 100ms
      bfd_multiplier: 5
`), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"-config", cfg})
	if err != nil {
		t.Fatal(err)
	}
	p := o.bgp.Peers[0]
	if o.bgp.LocalAS != 65001 || p.AS != 65000 || p.Password != "s3cret" || p.HoldTime != 9*time.Second || p.GracefulRestart != 2*time.Minute || p.MaxPrefixes != 10 || p.MaxPrefixesRestart != 5*time.Minute ||
		p.BFD == nil || p.BFD.MinTx != 100*time.Millisecond || p.BFD.MinRx != 0 || p.BFD.Multiplier != 5 {
		t.Fatalf("bgp config %+v", o.bgp)
	}
	// Flags on the command line win; -bgp-peer replaces the file's peers.
	o, err = parseFlags([]string{"-config", cfg, "-bgp-local-as", "65009", "-bgp-peer", "address=2001:db8::1,as=65100,passive,families=ipv6-unicast", "-bgp-peer", "address=192.0.2.253,as=65101,port=1179,bfd,bfd_min_rx=50ms"})
	if err != nil {
		t.Fatal(err)
	}
	if o.bgp.LocalAS != 65009 || len(o.bgp.Peers) != 2 || !o.bgp.Peers[0].Passive || o.bgp.Peers[1].Port != 1179 || o.bgp.Peers[0].Families[0] != "ipv6-unicast" ||
		o.bgp.Peers[0].BFD != nil || o.bgp.Peers[1].BFD == nil || o.bgp.Peers[1].BFD.MinRx != 50*time.Millisecond {
		t.Fatalf("bgp config with flags %+v", o.bgp)
	}
	if o, err := parseFlags([]string{"-node", "x"}); err != nil || o.bgp != nil {
		t.Fatalf("no bgp settings: %+v, %v (want BGP off)", o.bgp, err)
	}
}

func TestBGPConfigErrorsNameTheSetting(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.key")
	if err := os.WriteFile(open, []byte("s3cret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for args, want := range map[string]string{
		"-bgp-local-as 65001": "bgp.router_id",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer as=1":                                          "bgp.peers[0]: address",
		"-bgp-local-as 65001 -bgp-router-id x -bgp-peer address=1.2.3.4,as=1":                                  "bgp.router_id \"x\"",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,hold_time=soon":           "hold_time \"soon\"",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,password_file=" + open:    "readable by others",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,colour=blue":              "colour",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1 -reconcile=false":         "-reconcile=false",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,password_file=/nonexist":  "password_file",
		"-bgp-local-as 65001 -bgp-router-id 255.255.255.255 -bgp-peer address=1.2.3.4,as=1":                    "bgp.router_id",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=127.0.0.1,as=1":                        "bgp.peers[0]: address 127.0.0.1: a loopback address",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=224.0.0.1,as=1":                        "bgp.peers[0]: address",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=192.0.2.1,as=1":                        "own router id",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,hold_time=100000s":        "hold_time",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,connect_retry=-5s":        "connect_retry",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,bfd,bfd_min_tx=1ms":       "bgp.peers[0]: bfd_min_tx 1ms: want 10ms to 1m0s",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,bfd_min_rx=50ms":          "given with BFD off",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,bfd,bfd_multiplier=300":   "bfd_multiplier",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,bfd,multihop_ttl=2":       "bfd: single-hop only",
		"-bgp-local-as 65001 -bgp-router-id 192.0.2.1 -bgp-peer address=1.2.3.4,as=1,max_prefixes_restart=48h": "max_prefixes_restart 48h0m0s: want 1s to 24h",
	} {
		_, err := parseFlags(strings.Fields(args))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error with %q", args, err, want)
		}
	}
}

package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestMeradmBGPPeers: the cluster's peers through meradm; the key goes in
// from a file and never comes out.
func TestMeradmBGPPeers(t *testing.T) {
	p := startMerlin(t)
	key := filepath.Join(t.TempDir(), "tor-a.key")
	if err := os.WriteFile(key, []byte("s3cret-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok(t, p, "bgp", "settings", "--local-as", "65001", "--router-id-prefix", "198.18.6.0/24", "--link-bandwidth")
	ok(t, p, "bgp", "peer", "add", "tor-a", "198.18.6.1", "65000", "--bfd", "--hold-time", "9s", "--node-label", "rack=r1", "--password-from", key)
	ok(t, p, "bgp", "peer", "add", "core", "2001:db8:6::1", "65100", "--node", "n1", "--node", "n2")
	fails(t, p, "already exists", "bgp", "peer", "add", "tor-a", "198.18.6.1", "65000")
	fails(t, p, "hold_time", "bgp", "peer", "add", "bad", "198.18.6.2", "65000", "--hold-time", "1s")
	fails(t, p, "bfd", "bgp", "peer", "add", "bad", "198.18.6.2", "65000", "--bfd-multiplier", "5")
	ok(t, p, "bgp", "peer", "edit", "tor-a", "--hold-time", "6s")
	out := ok(t, p, "bgp", "peer", "list")
	for _, want := range []string{"local AS 65001", "the node's address in 198.18.6.0/24", "link bandwidth: sent by default", "tor-a", "198.18.6.1", "set", "300ms/300ms×3", "6s", "rack=r1", "core", "n1,n2"} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	js := ok(t, p, "bgp", "peer", "list", "-o", "json")
	if strings.Contains(out+js, "s3cret") || !regexp.MustCompile(`"password_set":\s*true`).MatchString(js) {
		t.Errorf("a list shows the key, or not that one is set:\n%s", js)
	}
	ok(t, p, "bgp", "peer", "edit", "tor-a", "--no-password")
	if js := ok(t, p, "bgp", "peer", "list", "-o", "json"); strings.Contains(js, "password_set") {
		t.Errorf("--no-password left a key:\n%s", js)
	}
	ok(t, p, "bgp", "peer", "del", "core")
	fails(t, p, "not found", "bgp", "peer", "del", "core")
	if out := ok(t, p, "bgp", "peer", "list"); strings.Contains(out, "core") {
		t.Errorf("core still listed:\n%s", out)
	}
}

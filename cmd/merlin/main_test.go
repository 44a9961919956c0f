package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigParses(t *testing.T) {
	o, err := parseFlags([]string{"-config", "../../deploy/merlin.yaml", "-node", "override"})
	if err != nil {
		t.Fatal(err)
	}
	if o.node != "override" || o.storeEndpoints != "https://etcd0:2379,https://etcd1:2379,https://etcd2:2379" ||
		o.resync != 30*time.Second || !o.sysctls || o.guardFraction != 0.5 || o.adopt != "198.18.0.0/24" || o.apiAddress != "0.0.0.0" {
		t.Fatalf("options from the example config: %+v", o)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{
		"no-such-flag: 1\n":                 "unknown setting \"no-such-flag\"",
		"reconcile-sync-period: often\n":    "reconcile-sync-period",
		"port: 70000\n":                     "-port 70000",
		"tls-cert: a.pem\n":                 "-tls-cert and -tls-key go together",
		"reconcile: [not, a, bool, list]\n": "reconcile",
	} {
		path := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := parseFlags([]string{"-config", path})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", content, err, want)
		}
	}
}

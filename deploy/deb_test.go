package deploy_test

import (
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// TestDebianPackage builds the package as `make deb` does (version
// v1.2.3) twice: the two are byte for byte the same; it holds what an
// installed merlin needs, where Debian wants it; its merlin carries the
// version; and lintian finds nothing (deploy/debian/lintian-overrides
// explains each tag it would).
func TestDebianPackage(t *testing.T) {
	for _, tool := range []string{"dpkg-deb", "lintian", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, testenv.PeersPromised(), "%s not installed (Debian's dpkg, lintian)", tool)
		}
	}
	if testing.Short() {
		t.Skip("builds the binaries twice")
	}
	deb := buildDeb(t)
	first := digest(t, deb)
	if again := digest(t, buildDeb(t)); again != first {
		t.Errorf("two builds of one commit differ: not reproducible")
	}
	list := run(t, "dpkg-deb", "-c", deb)
	for _, path := range []string{"./usr/sbin/merlin", "./usr/bin/meradm", "./lib/systemd/system/merlin.service", "./etc/merlin/merlin.yaml",
		"./usr/lib/modules-load.d/merlin.conf", "./usr/share/bash-completion/completions/meradm", "./usr/share/zsh/vendor-completions/_meradm",
		"./usr/share/fish/vendor_completions.d/meradm.fish", "./usr/share/man/man8/merlin.8.gz", "./usr/share/man/man1/meradm-server-drain.1.gz",
		"./usr/share/merlin/grafana/merlin.json", "./usr/share/merlin/prometheus/merlin-rules.yml", "./usr/share/doc/merlin/deploying.md",
		"./usr/share/doc/merlin/copyright", "./usr/share/doc/merlin/changelog.Debian.gz"} {
		if !strings.Contains(list, " "+path+"\n") {
			t.Errorf("the package lacks %s", path)
		}
	}
	if c := run(t, "dpkg-deb", "-f", deb, "Version"); strings.TrimSpace(c) != "1.2.3-1" {
		t.Errorf("package version %q, want 1.2.3-1", c)
	}
	dir := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, dir)
	run(t, "dpkg-deb", "-e", deb, filepath.Join(dir, "DEBIAN"))
	if v := run(t, filepath.Join(dir, "usr/sbin/merlin"), "-version"); !strings.HasPrefix(v, "merlin version v1.2.3 ") {
		t.Errorf("the packaged merlin says %q", v)
	}
	if c, _ := os.ReadFile(filepath.Join(dir, "DEBIAN/conffiles")); string(c) != "/etc/merlin/merlin.yaml\n" {
		t.Errorf("conffiles %q", c)
	}
	if u, _ := os.ReadFile(filepath.Join(dir, "lib/systemd/system/merlin.service")); !strings.Contains(string(u), "ExecStart=/usr/sbin/merlin -config /etc/merlin/merlin.yaml") {
		t.Errorf("the unit does not start the packaged merlin:\n%s", u)
	}
	// The conffile is every setting, commented: merlin starts on it as it is.
	if out, err := exec.Command(filepath.Join(dir, "usr/sbin/merlin"), "-config", filepath.Join(dir, "etc/merlin/merlin.yaml"), "-version").CombinedOutput(); err != nil {
		t.Errorf("merlin refuses the packaged configuration file: %v\n%s", err, out)
	}
	if out, err := exec.Command("lintian", "--tag-display-limit", "0", deb).CombinedOutput(); err != nil || strings.Contains(string(out), "\nE: ") || strings.Contains(string(out), "\nW: ") ||
		strings.HasPrefix(string(out), "E: ") || strings.HasPrefix(string(out), "W: ") {
		t.Errorf("lintian: %v\n%s", err, out)
	}
}

// buildDeb runs scripts/deb.sh for v1.2.3 with the Makefile's stamps.
func buildDeb(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("../scripts/deb.sh", "v1.2.3")
	cmd.Dir = "."
	cmd.Env = append(os.Environ(), "MERLIN_DEB_OUT="+dir, "LDFLAGS=-X github.com/merlin-ipvs/merlin/internal/version.stamped=v1.2.3 -X github.com/merlin-ipvs/merlin/internal/version.stampedCommit=0123456789abcdef")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("deb.sh: %v\n%s", err, out)
	}
	return strings.TrimSpace(lastLine(string(out)))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func digest(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

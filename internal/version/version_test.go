package version

import (
	"strings"
	"testing"
)

// A release build's stamped version and commit win over what Go recorded.
func TestStampedVersion(t *testing.T) {
	if got := Read(); got.Version == "" || got.Commit == "" || !strings.HasPrefix(got.GoVersion, "go") {
		t.Fatalf("unstamped: %+v", got)
	}
	defer func(v, c string) { stamped, stampedCommit = v, c }(stamped, stampedCommit)
	stamped, stampedCommit = "v1.2.3", "0123abcd"
	got := Read()
	if got.Version != "v1.2.3" {
		t.Errorf("version %q, want v1.2.3", got.Version)
	}
	if s := got.String(); !strings.HasPrefix(s, "v1.2.3 (commit ") {
		t.Errorf("String() = %q", s)
	}
}

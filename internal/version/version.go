// Package version says which build of merlin is running: the module
// version and VCS commit Go recorded in the binary. No privileges needed.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// stamped is the release version a build sets with
// -ldflags "-X github.com/merlin-ipvs/merlin/internal/version.stamped=v1.2.3"
// (`make build` does, from the git tag or the commit); it wins over the
// module version, which a plain `go build` in the repository leaves as
// "(devel)".
var stamped string

// stampedCommit is the commit `make build` stamps, for builds without Go's
// VCS stamping (-buildvcs=false).
var stampedCommit string

// Info is what a binary knows of its own build.
type Info struct {
	Version   string // module version ("(devel)" for a plain go build)
	Commit    string // VCS revision, with "+dirty" when the tree was modified
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	info := Info{Version: "(devel)", Commit: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if ok && bi.Main.Version != "" {
		info.Version = bi.Main.Version
	}
	if stamped != "" {
		info.Version = stamped
	}
	if stampedCommit != "" {
		info.Commit = stampedCommit
	}
	if !ok {
		return info
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty {
		info.Commit += "+dirty"
	}
	return info
}

// String is the version with its build: what `--version` prints after
// "merlin version" and node status carries.
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, %s)", i.Version, i.Commit, i.GoVersion)
}

package execprobe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/merlin-ipvs/merlin/health"
)

// Config says where exec checks' programs come from and whom they run as.
type Config struct {
	// Dir holds the only programs exec checks may run: an absolute path to
	// a directory that only root can write, like each program in it.
	Dir string
	// User the programs run as (name or numeric uid); not root.
	User string
	// MaxRunning bounds the programs running at once (default 64); a check
	// due while the bound is reached fails.
	MaxRunning int
}

// OutputLimit bounds the output of a program kept for its failure message.
const OutputLimit = 4096

// Prober runs exec checks; see the package comment. It is a
// health.KindProber.
type Prober struct {
	dir      string
	uid, gid uint32
	running  chan struct{}
}

// New checks cfg: the directory and the user must exist, the directory
// must be safe, the user must not be root.
func New(cfg Config) (*Prober, error) {
	if !filepath.IsAbs(cfg.Dir) {
		return nil, fmt.Errorf("exec check directory %q: want an absolute path", cfg.Dir)
	}
	dir, err := filepath.EvalSymlinks(filepath.Clean(cfg.Dir))
	if err != nil {
		return nil, fmt.Errorf("exec check directory: %w", err)
	}
	if err := rootOnly(dir, true); err != nil {
		return nil, fmt.Errorf("exec check directory: %w", err)
	}
	if err := safeAncestors(dir); err != nil {
		return nil, fmt.Errorf("exec check directory: %w", err)
	}
	uid, gid, err := lookupUser(cfg.User)
	if err != nil {
		return nil, err
	}
	if err := canSwitchUser(); err != nil {
		return nil, fmt.Errorf("exec checks run as %q: %w", cfg.User, err)
	}
	n := cfg.MaxRunning
	if n <= 0 {
		n = 64
	}
	return &Prober{dir: dir, uid: uid, gid: gid, running: make(chan struct{}, n)}, nil
}

func lookupUser(name string) (uid, gid uint32, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return 0, 0, fmt.Errorf("exec check user %q: no such user", name)
		}
	}
	id, err1 := strconv.ParseUint(u.Uid, 10, 32)
	g, err2 := strconv.ParseUint(u.Gid, 10, 32)
	switch {
	case err1 != nil || err2 != nil:
		return 0, 0, fmt.Errorf("exec check user %q: uid %q gid %q", name, u.Uid, u.Gid)
	case id == 0:
		return 0, 0, fmt.Errorf("exec check user %q is root: exec checks run as an unprivileged user", name)
	}
	return uint32(id), uint32(g), nil
}

// canSwitchUser: the calling thread holds CAP_SETUID and CAP_SETGID (a
// systemd unit must grant them for exec checks).
func canSwitchUser() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	if want := uint32(1<<unix.CAP_SETUID | 1<<unix.CAP_SETGID); data[0].Effective&want != want {
		return errors.New("merlin lacks CAP_SETUID and CAP_SETGID (add both to the unit's CapabilityBoundingSet and AmbientCapabilities)")
	}
	return nil
}

// rootOnly: path is owned by root and neither group nor others may write
// it (a directory with the sticky bit is not enough), and is a directory
// or a regular executable file as asked.
func rootOnly(path string, wantDir bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case wantDir && !fi.IsDir():
		return fmt.Errorf("%s is not a directory", path)
	case !wantDir && !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", path)
	case !wantDir && fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("%s is not executable", path)
	case !ok || st.Uid != 0:
		return fmt.Errorf("%s is not owned by root", path)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s may be written by others than root (mode %v)", path, fi.Mode().Perm())
	}
	return nil
}

// safeAncestors: no directory above dir lets anyone but root replace it:
// each is root's, and one that others may write has the sticky bit.
func safeAncestors(dir string) error {
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		switch {
		case !ok || st.Uid != 0:
			return fmt.Errorf("%s (above it) is not owned by root", d)
		case fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0:
			return fmt.Errorf("%s (above it) may be written by others than root (mode %v)", d, fi.Mode().Perm())
		}
		if d == "/" {
			return nil
		}
	}
}

// program resolves the command's first word inside the directory: a bare
// name, or a path that stays in it after symbolic links are followed.
func (p *Prober) program(name string) (string, error) {
	path, name := name, short(name)
	if !filepath.IsAbs(path) {
		path = filepath.Join(p.dir, path)
	}
	real, err := filepath.EvalSymlinks(filepath.Clean(path))
	if err != nil {
		return "", fmt.Errorf("program %q: %w", name, errors.Unwrap(err))
	}
	if filepath.Dir(real) != p.dir {
		return "", fmt.Errorf("program %q is not in the exec check directory %s", name, p.dir)
	}
	if err := rootOnly(real, false); err != nil {
		return "", fmt.Errorf("program %q: %w", name, err)
	}
	return real, nil
}

// Probe runs the check's program with its arguments (space-separated, no
// shell) until it exits or ctx ends, when its whole process group is
// killed. Exit status 0 is healthy.
func (p *Prober) Probe(ctx context.Context, c health.Check) error {
	args := strings.Fields(c.Spec().Command)
	if len(args) == 0 {
		return &health.ProbeError{Reason: health.ReasonOther, Err: errors.New("empty command")}
	}
	path, err := p.program(args[0])
	if err != nil {
		return &health.ProbeError{Reason: health.ReasonOther, Err: err}
	}
	select {
	case p.running <- struct{}{}:
		defer func() { <-p.running }()
	default:
		return &health.ProbeError{Reason: health.ReasonOther, Err: fmt.Errorf("%d exec checks already running", cap(p.running))}
	}
	out := &boundedBuffer{limit: OutputLimit}
	cmd := exec.CommandContext(ctx, path, args[1:]...)
	cmd.Args[0] = args[0]
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C",
		"MERLIN_TARGET_IP=" + c.Target.Addr().String(), "MERLIN_TARGET_PORT=" + strconv.Itoa(int(c.Target.Port()))}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: p.uid, Gid: p.gid, Groups: []uint32{}}}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second // a child that keeps the output open
	err = cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // what it left behind
	}
	switch {
	case ctx.Err() != nil:
		return &health.ProbeError{Reason: health.ReasonTimeout, Err: fmt.Errorf("%s: %w", short(args[0]), ctx.Err())}
	case err != nil:
		return &health.ProbeError{Reason: health.ReasonExit, Err: fmt.Errorf("%s: %v: %s", short(args[0]), err, strings.TrimSpace(out.String()))}
	}
	return nil
}

// short quotes at most 64 bytes of a program's name in a message.
func short(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// boundedBuffer keeps the first limit bytes written to it and drops the rest.
type boundedBuffer struct {
	mu      sync.Mutex
	buf     []byte
	limit   int
	dropped int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := min(len(p), b.limit-len(b.buf))
	b.buf = append(b.buf, p[:keep]...)
	b.dropped += len(p) - keep
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped > 0 {
		return fmt.Sprintf("%s… (%d more bytes)", b.buf, b.dropped)
	}
	return string(b.buf)
}

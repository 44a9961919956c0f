package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// EnvPromise is set to 1 inside the VM: tests that need IPVS (or anything
// else the VM kernel provides) fail there instead of skipping.
const EnvPromise = "MERLIN_VM"

// EnvKernel carries the guest kernel's package name and version into the VM.
const EnvKernel = "MERLIN_VM_KERNEL"

// Options describe one VM run.
type Options struct {
	Kernel    *Kernel
	MemoryMiB int       // guest memory; the writable overlay gets half. Default 2048.
	CPUs      int       // default 1: a busy 2-core host makes -smp 2 guests slower
	Dir       string    // working directory of the program inside the guest
	Env       []string  // the program's whole environment (EnvPromise is added)
	Stdout    io.Writer // the program's stdout and stderr, merged
	Stderr    io.Writer // qemu's own diagnostics and, on failure, the console tail
	// WritableDirs are host directories the program may write to, mounted at
	// the same paths (e.g. a test binary's directory, for -coverprofile).
	WritableDirs []string
	Busybox      string // static busybox; default /bin/busybox
	Qemu         string // default qemu-system-x86_64
	Bios         string // default /usr/share/qemu/qboot.rom
	KeepJobDir   bool   // leave the job directory (console log, initramfs) for debugging
	// Systemd boots Debian's systemd as PID 1 on the guest's root, and the
	// program as a unit of it (merlin-vmjob.service), so that it can install
	// packages and start units with systemctl.
	Systemd bool
	// RootFS is a host directory holding the guest's root filesystem (the
	// overlay's lower layer; default the host's /). HostDirs are host
	// directories then shown read-only at the same paths (the program's
	// source tree).
	RootFS   string
	HostDirs []string
}

// Run boots the kernel, runs argv inside and returns its exit status. An
// error means the VM itself failed (the program's status is then unknown).
func Run(ctx context.Context, o Options, argv []string) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("vm: no program given")
	}
	o.setDefaults()
	jobDir, err := os.MkdirTemp("", "merlin-vm-")
	if err != nil {
		return 0, fmt.Errorf("vm: job dir: %w", err)
	}
	if jobDir, err = filepath.EvalSymlinks(jobDir); err != nil {
		return 0, fmt.Errorf("vm: job dir: %w", err)
	}
	if !o.KeepJobDir {
		defer os.RemoveAll(jobDir)
	}
	if err := writeJob(jobDir, o, argv); err != nil {
		return 0, err
	}
	initrd := filepath.Join(jobDir, "initramfs.cpio")
	f, err := os.Create(initrd)
	if err != nil {
		return 0, fmt.Errorf("vm: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = buildInitramfs(bw, o.Kernel, o.Busybox)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		f.Close()
		return 0, fmt.Errorf("vm: initramfs: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("vm: initramfs: %w", err)
	}

	consoleLog := filepath.Join(jobDir, "console.log")
	cmd := exec.CommandContext(ctx, o.Qemu, o.qemuArgs(jobDir, initrd, consoleLog)...)
	cmd.Stdout = o.Stdout
	cmd.Stderr = o.Stderr
	// If qemu's stdin reaches EOF, writes to the virtio port block forever:
	// hand it a pipe whose write end stays open until qemu is gone.
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("vm: %w", err)
	}
	defer stdinW.Close()
	cmd.Stdin = stdinR
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runErr := cmd.Run()
	stdinR.Close()

	if b, err := os.ReadFile(filepath.Join(jobDir, "rc")); err == nil {
		if rc, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return rc, nil
		}
	}
	console, _ := os.ReadFile(consoleLog)
	if rc, ok := exitMarker(console); ok {
		return rc, nil
	}
	if ctx.Err() != nil {
		return 0, fmt.Errorf("vm: %w", ctx.Err())
	}
	fmt.Fprintf(o.Stderr, "vm: console tail:\n%s\n", tail(console, 4000))
	if runErr != nil {
		return 0, fmt.Errorf("vm: qemu: %w", runErr)
	}
	return 0, errors.New("vm: the guest exited without reporting a status")
}

func (o *Options) setDefaults() {
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 2048
	}
	if o.CPUs == 0 {
		o.CPUs = 1
	}
	if o.Busybox == "" {
		o.Busybox = "/bin/busybox"
	}
	if o.Qemu == "" {
		o.Qemu = "qemu-system-x86_64"
	}
	if o.Bios == "" {
		o.Bios = "/usr/share/qemu/qboot.rom"
	}
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	if o.Dir == "" {
		o.Dir = "/"
	}
}

func (o *Options) qemuArgs(jobDir, initrd, consoleLog string) []string {
	appendLine := strings.Join([]string{
		"console=ttyS0", "rdinit=/init", "panic=-1", "quiet", "loglevel=4", "mitigations=off",
		"merlin.kver=" + o.Kernel.Release,
		"merlin.moddir=" + o.Kernel.ModulesDir,
		"merlin.jobdir=" + jobDir,
		"merlin.tmpfs=" + strconv.Itoa(o.MemoryMiB/2) + "m",
		"merlin.systemd=" + map[bool]string{true: "1", false: "0"}[o.Systemd],
		"merlin.rootfs=" + o.RootFS,
	}, " ")
	accel := "tcg"
	if o.CPUs > 1 {
		accel = "tcg,thread=multi"
	}
	args := []string{
		// -nodefaults: no network card, only loopback exists in the guest.
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "pc", "-accel", accel, "-cpu", "max",
		"-smp", strconv.Itoa(o.CPUs), "-m", strconv.Itoa(o.MemoryMiB),
		"-bios", o.Bios, "-kernel", o.Kernel.Vmlinux, "-initrd", initrd, "-append", appendLine,
		"-serial", "file:" + consoleLog,
		"-device", "virtio-serial-pci",
		"-chardev", "stdio,id=out,signal=off",
		"-device", "virtserialport,chardev=out,name=out",
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + jobDir + ",mount_tag=job,security_model=none,multidevs=remap",
	}
	for i, d := range o.WritableDirs {
		args = append(args, "-virtfs", fmt.Sprintf("local,path=%s,mount_tag=rw%d,security_model=none,multidevs=remap", d, i))
	}
	return args
}

func writeJob(jobDir string, o Options, argv []string) error {
	var sh bytes.Buffer
	fmt.Fprintf(&sh, "cd %s || exit 125\nexec env -i", shellQuote(o.Dir))
	env := append(append([]string{}, o.Env...), EnvPromise+"=1",
		EnvKernel+"="+filepath.Base(o.Kernel.Dir)+" "+o.Kernel.DebVersion)
	for _, kv := range env {
		if strings.Contains(kv, "=") {
			sh.WriteString(" " + shellQuote(kv))
		}
	}
	for _, a := range argv {
		sh.WriteString(" " + shellQuote(a))
	}
	sh.WriteByte('\n')
	if err := os.WriteFile(filepath.Join(jobDir, "job.sh"), sh.Bytes(), 0o644); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	var rw bytes.Buffer
	for i, d := range o.WritableDirs {
		real, err := filepath.EvalSymlinks(d)
		if err != nil {
			return fmt.Errorf("vm: writable dir: %w", err)
		}
		o.WritableDirs[i] = real
		rw.WriteString(real + "\n")
	}
	if err := os.WriteFile(filepath.Join(jobDir, "rw-shares"), rw.Bytes(), 0o644); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	var ro bytes.Buffer
	for _, d := range o.HostDirs {
		real, err := filepath.EvalSymlinks(d)
		if err != nil {
			return fmt.Errorf("vm: host dir: %w", err)
		}
		ro.WriteString(real + "\n")
	}
	if err := os.WriteFile(filepath.Join(jobDir, "host-dirs"), ro.Bytes(), 0o644); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	return nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func exitMarker(console []byte) (int, bool) {
	i := bytes.LastIndex(console, []byte("MERLIN-EXIT="))
	if i < 0 {
		return 0, false
	}
	rest := console[i+len("MERLIN-EXIT="):]
	end := bytes.IndexAny(rest, "\r\n")
	if end < 0 {
		end = len(rest)
	}
	rc, err := strconv.Atoi(string(rest[:end]))
	return rc, err == nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

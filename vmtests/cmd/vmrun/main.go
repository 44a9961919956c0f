// Command vmrun runs one program inside a qemu VM booting Debian's kernel
// (see package vm). It is made for `go test -exec vmrun`: it takes the
// program and its arguments, keeps the current directory and environment,
// and exits with the program's status.
//
// Settings come from the environment so that no flag collides with the
// program's: MERLIN_VM_MEMORY (MiB), MERLIN_VM_CPUS, MERLIN_VM_KEEP=1 (keep
// the job directory), MERLIN_CACHE (where scripts/setup.sh put the kernel).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/merlin-ipvs/merlin/vmtests/vm"
)

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vmrun PROGRAM [ARG...]")
		return 2
	}
	// go test sends SIGQUIT on timeout: every signal must take qemu down.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGHUP)
	defer stop()

	k, err := vm.FindKernel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmrun:", err)
		return 125
	}
	prog, err := filepath.Abs(os.Args[1])
	if err == nil {
		prog, err = filepath.EvalSymlinks(prog)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmrun:", err)
		return 125
	}
	dir, err := os.Getwd()
	if err == nil {
		dir, err = filepath.EvalSymlinks(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmrun:", err)
		return 125
	}
	opts := vm.Options{
		Kernel:       k,
		MemoryMiB:    envInt("MERLIN_VM_MEMORY", 0),
		CPUs:         envInt("MERLIN_VM_CPUS", 0),
		Dir:          dir,
		Env:          os.Environ(),
		Stdout:       os.Stdout,
		Stderr:       os.Stderr,
		WritableDirs: []string{filepath.Dir(prog)},
		KeepJobDir:   os.Getenv("MERLIN_VM_KEEP") == "1",
		// The tests of vmtests/systemd need systemd as PID 1.
		Systemd: filepath.Base(prog) == "systemd.test" || os.Getenv("MERLIN_VM_SYSTEMD") == "1",
	}
	if opts.Systemd {
		// systemd boots the tier's own root filesystem, with the source
		// tree (the module the program's directory is in) shown inside.
		if opts.RootFS, err = vm.FindRootFS(); err != nil {
			fmt.Fprintln(os.Stderr, "vmrun:", err)
			return 125
		}
		opts.HostDirs = []string{moduleRoot(dir)}
	}
	rc, err := vm.Run(ctx, opts, append([]string{prog}, os.Args[2:]...))
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmrun:", err)
		return 125
	}
	return rc
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// moduleRoot is the directory of the go.mod above dir (dir itself without one).
func moduleRoot(dir string) string {
	for d := dir; d != filepath.Dir(d); d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	return dir
}

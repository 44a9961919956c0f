// Package netns creates, enters and deletes named Linux network namespaces
// (the `ip netns` kind, under /run/netns). It needs root (CAP_SYS_ADMIN)
// and the iproute2 `ip` command.
package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NS is a named network namespace with an open handle.
type NS struct {
	Name string
	file *os.File
}

// New creates a namespace named prefix plus a random suffix, with loopback up.
func New(prefix string) (*NS, error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := prefix + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	f, err := os.Open(filepath.Join("/run/netns", name))
	if err != nil {
		_ = exec.Command("ip", "netns", "delete", name).Run()
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	ns := &NS{Name: name, file: f}
	if out, err := ns.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		ns.Delete()
		return nil, fmt.Errorf("loopback up in %s: %w: %s", name, err, out)
	}
	return ns, nil
}

// FD is the namespace's file descriptor, valid until Delete.
func (ns *NS) FD() int { return int(ns.file.Fd()) }

// Path is the namespace's bind mount, e.g. /run/netns/NAME.
func (ns *NS) Path() string { return filepath.Join("/run/netns", ns.Name) }

// Delete closes the handle and removes the namespace.
func (ns *NS) Delete() error {
	ns.file.Close()
	if out, err := exec.Command("ip", "netns", "delete", ns.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %w: %s", ns.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Command prepares a command that runs inside the namespace.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Do runs fn on an OS thread switched into the namespace; sockets fn
// creates stay in the namespace. A thread that cannot switch back is
// discarded rather than reused.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Setns(ns.FD(), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

package lowprio

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// Run runs fn on an OS thread of its own at the given nice value (1–19:
// lower than the process's threads; a thread already lower stays so) and returns when fn does. The thread
// ends with fn, so the priority never reaches other goroutines. If the
// priority cannot be set (a seccomp filter), fn runs at the usual one.
func Run(nice int, fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Not unlocked: a goroutine that exits locked takes its thread
		// with it, niced priority and all.
		runtime.LockOSThread()
		tid := unix.Gettid()
		// getpriority's raw value is 20 - nice; never raise a priority
		// (root could).
		if raw, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil && 20-raw < nice {
			_ = unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
		}
		fn()
	}()
	<-done
}

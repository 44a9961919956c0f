package lowprio

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// nice is the calling thread's nice value (getpriority's raw value is
// 20 - nice).
func nice(t *testing.T) int {
	t.Helper()
	p, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	return 20 - p
}

// The work runs niced; the caller's thread keeps its priority.
func TestRunNicesOnlyTheWork(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := nice(t)
	got := -100
	Run(10, func() { got = nice(t) })
	if got != max(before, 10) {
		t.Fatalf("the work ran at nice %d, want %d", got, max(before, 10))
	}
	if after := nice(t); after != before {
		t.Fatalf("the caller's nice went from %d to %d", before, after)
	}
}

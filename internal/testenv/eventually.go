package testenv

import (
	"testing"
	"time"
)

// EventuallyWithin is how long Eventually waits: generous, since a loaded
// two-core machine or the emulated VM is slow. A test that needs less
// waits for something else, never for a time.
const EventuallyWithin = time.Minute

// Eventually polls cond until it holds, failing the test with what it was
// waiting for once EventuallyWithin has passed. It is the one poller of the
// tests: they wait for an observable state, never sleep to prove nothing
// happened.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(EventuallyWithin)
	for wait := time.Millisecond; !cond(); wait = min(2*wait, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", EventuallyWithin, what)
		}
		time.Sleep(wait)
	}
}

//go:build !linux

package lowprio

// Run runs fn: other systems keep their priority.
func Run(_ int, fn func()) { fn() }

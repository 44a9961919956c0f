// Package lowprio runs background work at a lower CPU priority than the
// rest of the process, so that on a small machine a long read of the
// kernel's tables (whose cost is mostly system calls) yields to the work
// that answers clients. On Linux it sets the nice value of an OS thread of
// the work's own, which needs no privilege (raising a priority would);
// elsewhere it runs the work as it is.
package lowprio

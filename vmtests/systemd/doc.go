// Package systemd holds the VM tests of merlin as operators install it:
// the Debian package under a real systemd (PID 1 in the guest: vmrun
// boots it for this package's test binary). Needs the VM.
package systemd

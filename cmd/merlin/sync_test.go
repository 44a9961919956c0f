package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The sync link's carrier count survives a merlin restart on the same
// boot only: after a reboot (another boot ID), another interface or a
// damaged file it means nothing.
func TestSyncLinkRecord(t *testing.T) {
	dir := t.TempDir()
	boot := "boot-a"
	l := newSyncLink("eth0", dir)
	l.bootID = func() (string, error) { return boot, nil }
	if _, ok := l.Recorded(); ok {
		t.Fatal("a count recorded before any was")
	}
	if err := l.Record(7); err != nil {
		t.Fatal(err)
	}
	if n, ok := l.Recorded(); !ok || n != 7 {
		t.Fatalf("Recorded() = %d, %v; want 7", n, ok)
	}
	other := newSyncLink("eth1", dir)
	other.bootID = l.bootID
	if _, ok := other.Recorded(); ok {
		t.Error("another interface's count taken")
	}
	boot = "boot-b"
	if _, ok := l.Recorded(); ok {
		t.Error("a count from another boot taken")
	}
	if err := os.WriteFile(filepath.Join(dir, "sync-link"), []byte("boot-b eth0 many\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Recorded(); ok {
		t.Error("a damaged record taken")
	}
}

package ipvs

import (
	"net/netip"
	"testing"
)

// TestSyncDaemonCodec: what StartSyncDaemon sends decodes as a GET_DAEMON
// reply does (the kernel answers with the same attributes).
func TestSyncDaemonCodec(t *testing.T) {
	for _, d := range []SyncDaemon{
		{Role: Master, Interface: "eth0", SyncID: 7, MaxLen: 1200, Group: netip.MustParseAddr("239.1.2.3"), Port: 8849, TTL: 2},
		{Role: Backup, Interface: "bond0.100", SyncID: 255, Group: netip.MustParseAddr("ff02::8178"), Port: 8848, TTL: 1, MaxLen: 1472},
	} {
		got, err := decodeDaemon(append([]byte{cmdGetDaemon, genlVersion, 0, 0}, d.encode()...))
		if err != nil || got != d {
			t.Errorf("%+v decodes as %+v, %v", d, got, err)
		}
	}
	if _, err := decodeDaemon([]byte{cmdGetDaemon, genlVersion, 0, 0}); err == nil {
		t.Error("a reply without a daemon decoded")
	}
	for _, bad := range []SyncDaemon{{Interface: "eth0"}, {Role: Master}, {Role: Master, Interface: "eth0", Group: netip.MustParseAddr("10.0.0.1")}} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}

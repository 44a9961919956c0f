package ipvs

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/merlin-ipvs/merlin/internal/testenv"
)

// TestKernelCountersUnderTraffic sends real TCP connections through a NAT
// service (client and backend in their own namespaces) and checks merlin's
// 64-bit counters against ipvsadm --stats --exact.
func TestKernelCountersUnderTraffic(t *testing.T) {
	c, director := newKernelClient(t)
	client := testenv.NewNetNS(t)
	backend := testenv.NewNetNS(t)
	link := func(a *testenv.NetNS, aName string, b *testenv.NetNS, bName string) {
		t.Helper()
		if out, err := ns0Run("ip", "link", "add", aName, "netns", a.Name, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
			t.Fatalf("veth: %v: %s", err, out)
		}
	}
	link(client, "c0", director, "d0")
	link(backend, "b0", director, "d1")
	client.Run(t, "ip", "addr", "add", "198.18.1.2/24", "dev", "c0")
	client.Run(t, "ip", "link", "set", "c0", "up")
	client.Run(t, "ip", "route", "add", "default", "via", "198.18.1.1")
	director.Run(t, "ip", "addr", "add", "198.18.1.1/24", "dev", "d0")
	director.Run(t, "ip", "addr", "add", "198.19.0.1/24", "dev", "d1")
	director.Run(t, "ip", "addr", "add", "198.18.0.10/32", "dev", "lo")
	director.Run(t, "ip", "link", "set", "d0", "up")
	director.Run(t, "ip", "link", "set", "d1", "up")
	director.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	backend.Run(t, "ip", "addr", "add", "198.19.0.2/24", "dev", "b0")
	backend.Run(t, "ip", "link", "set", "b0", "up")
	backend.Run(t, "ip", "route", "add", "default", "via", "198.19.0.1")

	var ln net.Listener
	if err := backend.Do(func() (err error) { ln, err = net.Listen("tcp4", "198.19.0.2:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer conn.Close(); _, _ = io.Copy(conn, conn) }()
		}
	}()

	vip := svc("198.18.0.10", 80, "rr")
	real := Destination{Key: DestinationKey{Address: netip.MustParseAddr("198.19.0.2"), Port: 8080}, Config: DestinationConfig{Weight: 1, Forward: Masquerade}}
	apply(t, c, Diff([]VirtualServer{{Service: vip, Destinations: []Destination{real}}}, nil))

	const conns = 20
	for i := range conns {
		var conn net.Conn
		err := client.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp4", "198.18.0.10:80", 10*time.Second)
			return err
		})
		if err != nil {
			t.Fatalf("connection %d through the VIP: %v", i, err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		msg := "hello " + strconv.Itoa(i) + "\n"
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("echo %d: %q, %v", i, got, err)
		}
		conn.Close()
	}

	read := func() (Stats, DestinationStatus) {
		s, err := c.Service(ctxT(t), vip.Key)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := c.Destinations(ctxT(t), vip.Key)
		if err != nil || len(ds) != 1 {
			t.Fatalf("destinations %v, %v", ds, err)
		}
		return s.Stats, ds[0]
	}
	// The kernel sums its per-CPU counters in the rate estimator, every 2 s.
	before, beforeDest := read()
	for deadline := time.Now().Add(15 * time.Second); before.Connections < conns && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		before, beforeDest = read()
	}
	oracle := director.Run(t, "ipvsadm", "-Ln", "--stats", "--exact")
	after, afterDest := read()
	if before.Connections != conns || beforeDest.Stats.Connections != conns {
		t.Fatalf("connections: service %d, destination %d, want %d", before.Connections, beforeDest.Stats.Connections, conns)
	}
	if before.InPackets < 3*conns || before.OutPackets < 2*conns || before.InBytes < 40*3*conns {
		t.Fatalf("implausible counters %+v", before)
	}
	svcLine, destLine := statsLines(t, oracle, "198.18.0.10:80", "198.19.0.2:8080")
	for _, pair := range []struct {
		name        string
		line        []uint64
		ours, ours2 Stats
	}{{"service", svcLine, before, after}, {"destination", destLine, beforeDest.Stats, afterDest.Stats}} {
		for _, s := range []Stats{pair.ours, pair.ours2} {
			if s.Connections == pair.line[0] && s.InPackets == pair.line[1] && s.OutPackets == pair.line[2] && s.InBytes == pair.line[3] && s.OutBytes == pair.line[4] {
				goto ok
			}
		}
		t.Fatalf("%s counters: merlin %+v / %+v, ipvsadm %v", pair.name, pair.ours, pair.ours2, pair.line)
	ok:
	}
	if beforeDest.ActiveConnections+beforeDest.InactiveConnections == 0 {
		t.Errorf("no connection entries counted on the destination: %+v", beforeDest)
	}
	if err := c.ZeroStats(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if s, d := read(); s.Connections != 0 || s.InBytes != 0 || d.Stats.Connections != 0 {
		t.Fatalf("counters after zeroing: service %+v, destination %+v", s, d.Stats)
	}
}

// statsLines picks the counters of one service and one destination from
// `ipvsadm -Ln --stats --exact`.
func statsLines(t *testing.T, out, service, dest string) (svc, dst []uint64) {
	t.Helper()
	nums := func(f []string) []uint64 {
		var v []uint64
		for _, s := range f {
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("ipvsadm stats field %q: %v", s, err)
			}
			v = append(v, n)
		}
		return v
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 7 && f[1] == service:
			svc = nums(f[2:])
		case len(f) == 7 && f[0] == "->" && f[1] == dest:
			dst = nums(f[2:])
		}
	}
	if svc == nil || dst == nil {
		t.Fatalf("ipvsadm output lacks %s or %s:\n%s", service, dest, out)
	}
	return svc, dst
}

func ns0Run(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

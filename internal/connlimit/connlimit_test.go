package connlimit

import (
	"net"
	"testing"
	"time"
)

func TestCapRefusesAndFrees(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, 2, 0, nil)
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	dial()
	first := <-accepted
	<-accepted
	extra := dial()
	// The third is closed by the server: the client reads EOF.
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil {
		t.Fatal("a connection beyond the cap stayed open")
	}
	if l.Refused() != 1 || l.Open() != 2 {
		t.Fatalf("refused %d, open %d", l.Refused(), l.Open())
	}
	first.Close()
	first.Close() // twice counts once
	dial()
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("a freed slot was not given to the next connection")
	}
	if l.Open() != 2 {
		t.Fatalf("open %d after one closed and one accepted", l.Open())
	}
}

func TestFit(t *testing.T) {
	for _, tc := range []struct {
		max     int
		nofile  uint64
		want    int
		lowered bool
	}{
		{1024, 65536, 1024, false},
		{1024, 1024, 512, true},
		{1024, 300, 150, true},
		{100, 300, 100, false},
		{1 << 20, 1 << 40, 1 << 20, false},
	} {
		if got, lowered := Fit(tc.max, tc.nofile); got != tc.want || lowered != tc.lowered {
			t.Errorf("Fit(%d, %d) = %d, %v; want %d, %v", tc.max, tc.nofile, got, lowered, tc.want, tc.lowered)
		}
	}
}

// One source gets perSource connections; another still gets in.
func TestPerSourceCap(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, 100, 3, nil)
	defer l.Close()
	accepted := make(chan net.Conn, 100)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	from := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for range 3 {
		from("127.0.0.2")
		<-accepted
	}
	extra := from("127.0.0.2")
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil {
		t.Fatal("a fourth connection from one source was served")
	}
	from("127.0.0.3")
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("another source was refused")
	}
	if l.Refused() != 1 || l.Open() != 4 {
		t.Fatalf("refused %d, open %d; want 1 and 4", l.Refused(), l.Open())
	}
}

// Open never counts a connection being refused: while 500 connections
// from a source at its cap are refused, Open stays at the one held.
func TestOpenNeverCountsRefused(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedOne := make(chan struct{}, 1000)
	l := New(inner, 10, 1, func() { refusedOne <- struct{}{} })
	defer l.Close()
	go func() {
		for {
			if _, err := l.Accept(); err != nil {
				return
			}
		}
	}()
	held, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	done := make(chan int64)
	stop := make(chan struct{})
	go func() {
		var most int64
		for {
			select {
			case <-stop:
				done <- most
				return
			default:
				most = max(most, l.Open())
			}
		}
	}()
	for range 500 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		<-refusedOne
		c.Close()
	}
	close(stop)
	if most := <-done; most != 1 {
		t.Fatalf("Open reached %d while refusing; one connection was held", most)
	}
}

package health

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"
)

// The probe benchmarks run against listeners in the same process, so their
// ns/op includes the server's side; allocs/op and the CPU profile of the
// probe functions are what they are for.

func BenchmarkProbeTCP(b *testing.B) {
	ln := listen(b)
	acceptAndClose(ln)
	c := Check{Kind: TCP, Target: addrOf(b, ln.Addr()), Timeout: time.Second}
	p := NewProber()
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Probe(context.Background(), c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkProbeHTTP(b *testing.B) {
	ln := listen(b)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	c := Check{Kind: HTTP, Target: addrOf(b, ln.Addr()), Probe: ProbeOf(ProbeSpec{Path: "/health", ExpectStatus: "200"}), Timeout: time.Second}
	p := NewProber()
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Probe(context.Background(), c); err != nil {
			b.Fatal(err)
		}
	}
}

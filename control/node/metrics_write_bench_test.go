package node

import (
	"context"
	"fmt"
	"io"
	"testing"
)

// BenchmarkWriteMetrics writes what a background read of 10,000 services
// × 10 NAT servers leaves with the default per-backend families.
func BenchmarkWriteMetrics(b *testing.B) {
	const services, dests = 10000, 10
	tr := NewTraffic(nil, nil, TrafficOptions{BackendFamilies: DefaultBackendFamilies})
	var lb labelBuf
	svc := make([]string, services)
	srv := make([]string, 0, services*dests)
	for i := range services {
		id := fmt.Sprintf("svc%05d", i)
		svc[i] = lb.render("service", id)
		for j := range dests {
			srv = append(srv, lb.render("service", id, "server", fmt.Sprintf("198.19.%d.%d:%d", j, i%250, 8000+i/250)))
		}
	}
	var fams []renderedFamily
	for i := range 13 {
		fams = append(fams, renderedFamily{name: fmt.Sprintf("merlin_service_family_%d_total", i), typ: counterType, help: "h", labels: svc, values: make([]float64, len(svc))})
	}
	for i := range 6 {
		values := make([]float64, len(srv))
		for j := range values {
			values[j] = float64(j * 1000)
		}
		fams = append(fams, renderedFamily{name: fmt.Sprintf("merlin_backend_family_%d_total", i), typ: counterType, help: "h", labels: srv, values: values})
	}
	tr.ipvsRead.Store(&partRead{complete: true, families: fams})
	tr.kernel = fakeKernel{}
	b.ResetTimer()
	for range b.N {
		if err := tr.WriteMetrics(context.Background(), io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

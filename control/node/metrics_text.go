package node

import (
	"bufio"
	"context"
	"io"
	"math"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// textWriter writes the Prometheus text exposition format (0.0.4)
// directly: the traffic metrics are hundreds of thousands of series, too
// many to build as client_golang metrics on every scrape.
type textWriter struct {
	w   *bufio.Writer
	buf []byte
}

func newTextWriter(w io.Writer) *textWriter {
	return &textWriter{w: bufio.NewWriterSize(w, 64<<10), buf: make([]byte, 0, 256)}
}

// family starts a metric family: its HELP and TYPE lines.
func (t *textWriter) family(name, typ, help string) {
	b := append(t.buf[:0], "# HELP "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = appendEscaped(b, help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = append(b, typ...)
	b = append(b, '\n')
	t.buf = b
	_, _ = t.w.Write(b)
}

// sample writes one series; labels are name, value pairs.
func (t *textWriter) sample(name string, v float64, labels ...string) {
	b := append(t.buf[:0], name...)
	if len(labels) > 0 {
		b = appendLabels(b, labels)
	}
	b = append(b, ' ')
	b = appendValue(b, v)
	b = append(b, '\n')
	t.buf = b
	_, _ = t.w.Write(b)
}

// rendered writes one series whose label set is already rendered.
func (t *textWriter) rendered(name, labels string, v float64) {
	b := append(t.buf[:0], name...)
	b = append(b, labels...)
	b = append(b, ' ')
	b = appendValue(b, v)
	b = append(b, '\n')
	t.buf = b
	_, _ = t.w.Write(b)
}

func appendValue(b []byte, v float64) []byte {
	if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
		return strconv.AppendInt(b, int64(v), 10)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

func (t *textWriter) flush() error { return t.w.Flush() }

// labelBuf renders label sets as the text format writes them.
type labelBuf struct{ b []byte }

// render returns `{name="value",...}` for name, value pairs.
func (l *labelBuf) render(pairs ...string) string {
	l.b = appendLabels(l.b[:0], pairs)
	return string(l.b)
}

// appendLabels appends `{name="value",...}` for name, value pairs.
func appendLabels(b []byte, pairs []string) []byte {
	b = append(b, '{')
	for i := 0; i+1 < len(pairs); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, pairs[i]...)
		b = append(b, `="`...)
		b = appendEscaped(b, pairs[i+1], true)
		b = append(b, '"')
	}
	return append(b, '}')
}

// appendEscaped escapes a label value (backslash, quote, newline) or a
// HELP text (backslash, newline).
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// MetricsWriter writes metric families in the text format on a scrape,
// outside the registry: families of one series per server, too many to
// build as client_golang metrics on every scrape.
type MetricsWriter interface {
	WriteMetrics(ctx context.Context, w io.Writer) error
}

// MetricsHandler serves /metrics: what the registry gathers, then what
// each writer writes, in the text format.
func MetricsHandler(reg prometheus.Gatherer, writers ...MetricsWriter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mfs, err := reg.Gather()
		if err != nil && len(mfs) == 0 {
			http.Error(w, "gather metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				return
			}
		}
		for _, mw := range writers {
			if mw.WriteMetrics(r.Context(), w) != nil {
				return
			}
		}
	})
}

package main

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// The counter counts series however the text is cut into writes.
func TestSeriesCounter(t *testing.T) {
	text := "# HELP a x\n# TYPE a counter\na{b=\"1\"} 1\na{b=\"2\"} 2\n\n# HELP c y\nc 3\n"
	var c seriesCounter
	if _, err := io.CopyBuffer(&c, iotest.OneByteReader(strings.NewReader(text)), make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if c.series != 3 || c.bytes != len(text) {
		t.Fatalf("series %d, bytes %d of %d", c.series, c.bytes, len(text))
	}
}

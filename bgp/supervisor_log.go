package bgp

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"slices"
	"time"
)

// Bounds on what a speaker's stderr may put into merlin's log: a line's
// length, and the lines that are not the speaker's own JSON records (a
// crash's goroutine dump of GoBGP can run to thousands of lines).
const (
	maxRelayLine = 16 << 10
	maxRawLines  = 200
)

// relayLogs passes the speaker's JSON log records on through log, as if
// they had been logged here, and other output (a panic and its stack) as
// error lines, up to maxRawLines of them.
func relayLogs(log *slog.Logger, r io.ReadCloser) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxRelayLine)
	raw, dropped := 0, 0
	for {
		if !sc.Scan() {
			if sc.Err() == nil {
				break
			}
			// a line over the bound: skip the rest of it
			sc = bufio.NewScanner(r)
			sc.Buffer(make([]byte, 4096), maxRelayLine)
			continue
		}
		if relayRecord(log, sc.Bytes()) {
			continue
		}
		if raw++; raw > maxRawLines {
			dropped++
			continue
		}
		log.Error("bgp speaker output", "line", sc.Text())
	}
	if dropped > 0 {
		log.Error("bgp speaker output cut", "lines_not_logged", dropped)
	}
}

// relayRecord re-logs one JSON record of the speaker's slog handler.
func relayRecord(log *slog.Logger, line []byte) bool {
	var rec map[string]any
	if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &rec) != nil {
		return false
	}
	msg, _ := rec["msg"].(string)
	var level slog.Level
	if l, ok := rec["level"].(string); !ok || level.UnmarshalText([]byte(l)) != nil {
		return false
	}
	if !log.Enabled(context.Background(), level) {
		return true
	}
	r := slog.NewRecord(time.Now(), level, msg, 0)
	if t, ok := rec["time"].(string); ok {
		if ts, err := time.Parse(time.RFC3339Nano, t); err == nil {
			r.Time = ts
		}
	}
	for _, k := range slices.Sorted(maps.Keys(rec)) {
		if k != "msg" && k != "level" && k != "time" {
			r.AddAttrs(slog.Any(k, rec[k]))
		}
	}
	log.Handler().Handle(context.Background(), r)
	return true
}

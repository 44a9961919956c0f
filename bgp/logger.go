package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// events keeps what GoBGP reports only in its log: why a session went
// down, and a peer over its prefix limit.
type events struct {
	overLimit chan string   // peer addresses to shut down
	changed   chan struct{} // a session went up or down

	mu        sync.Mutex
	lastError map[string]string
	shut      map[string]bool
}

func newEvents() *events {
	return &events{overLimit: make(chan string, 16), changed: make(chan struct{}, 1), lastError: map[string]string{}, shut: map[string]bool{}}
}

func (e *events) setError(addr, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastError[addr] = msg
}

func (e *events) setShut(addr string, v bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.shut[addr] = v
}

func (e *events) poke() {
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

func (e *events) get(addr string) (lastError string, shut bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastError[addr], e.shut[addr]
}

// logger passes GoBGP's logs to slog and notes the peer events in them.
type logger struct {
	log *slog.Logger
	ev  *events
}

func (l *logger) note(msg string, f gobgplog.Fields) {
	key, _ := f["Key"].(string)
	if key == "" {
		return
	}
	switch msg {
	case "Peer Up":
		l.ev.poke()
	case "Peer Down":
		defer l.ev.poke()
		if reason, ok := f["Reason"]; ok {
			if _, shut := l.ev.get(key); !shut {
				l.ev.setError(key, fmt.Sprint(reason))
			}
		}
	case "prefix limit reached":
		if _, warnOnly := f["Pct"]; !warnOnly {
			select {
			case l.ev.overLimit <- key:
			default: // a shutdown is already queued
			}
		}
	}
}

func (l *logger) emit(level slog.Level, msg string, f gobgplog.Fields) {
	l.note(msg, f)
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	attrs := make([]any, 0, 2*len(f)+2)
	attrs = append(attrs, "component", "bgp")
	for _, k := range slices.Sorted(mapsKeys(f)) {
		attrs = append(attrs, k, f[k])
	}
	l.log.Log(context.Background(), level, msg, attrs...)
}

func mapsKeys(f gobgplog.Fields) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range f {
			if !yield(k) {
				return
			}
		}
	}
}

// Panic is GoBGP's "code logic bug": it expects not to return.
func (l *logger) Panic(msg string, f gobgplog.Fields) {
	l.emit(slog.LevelError, msg, f)
	panic("gobgp: " + msg)
}

// Fatal is logged, never exits: merlin decides when it stops.
func (l *logger) Fatal(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *logger) Error(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *logger) Warn(msg string, f gobgplog.Fields)  { l.emit(slog.LevelWarn, msg, f) }
func (l *logger) Info(msg string, f gobgplog.Fields)  { l.emit(slog.LevelInfo, msg, f) }
func (l *logger) Debug(msg string, f gobgplog.Fields) { l.emit(slog.LevelDebug, msg, f) }
func (l *logger) SetLevel(gobgplog.LogLevel)          {}

// GetLevel lets GoBGP skip building debug fields unless slog wants them.
func (l *logger) GetLevel() gobgplog.LogLevel {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}

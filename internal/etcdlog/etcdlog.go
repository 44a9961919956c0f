// Package etcdlog writes etcd's zap logs (the embedded server's and the
// clients') to merlin's slog logger, so that merlin logs in one format at
// levels that suit it. No privileges needed.
package etcdlog

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// slogCore writes etcd's zap entries (the embedded server's, or a client's)
// to merlin's slog logger, so that merlin logs in one format. Stack traces
// are dropped: the message and fields say what happened.
type slogCore struct {
	log    *slog.Logger
	level  func(zapcore.Level) slog.Level
	fields []zapcore.Field
}

// Client is a zap logger for an etcd client that writes to log:
// the client's errors as warnings, the rest (its retries while etcd is
// away, which merlin reports itself) at debug.
func Client(log *slog.Logger) *zap.Logger {
	return zap.New(&slogCore{log: log, level: func(l zapcore.Level) slog.Level {
		if l >= zapcore.ErrorLevel {
			return slog.LevelWarn
		}
		return slog.LevelDebug
	}})
}

// Server is an embedded server's: errors as errors, warnings as
// information, its chatty information at debug, and while the server is being stopped
// everything (its errors about closed listeners are what a stop looks like)
// at debug.
func Server(log *slog.Logger, stopping *atomic.Bool) *zap.Logger {
	return zap.New(&slogCore{log: log, level: func(l zapcore.Level) slog.Level {
		switch {
		case stopping.Load():
			return slog.LevelDebug
		case l >= zapcore.ErrorLevel:
			return slog.LevelError
		case l == zapcore.WarnLevel:
			return slog.LevelInfo // its warnings are for etcd operators (single port, simple tokens, slow requests)
		}
		return slog.LevelDebug
	}})
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return c.log.Enabled(context.Background(), c.level(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	d := *c
	d.fields = append(slices.Clip(c.fields), fields...)
	return &d
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields))
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	c.log.LogAttrs(context.Background(), c.level(e.Level), e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

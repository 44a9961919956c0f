package bfd

import (
	"fmt"
	"time"
)

// Config is one session's timers (RFC 5880 §6.8.1).
type Config struct {
	// MinTx is the desired minimum transmit interval once Up (0: 300 ms).
	// While not Up a session sends once a second, as the RFC requires.
	MinTx time.Duration
	// MinRx is the required minimum receive interval (0: 300 ms).
	MinRx time.Duration
	// Multiplier is the detection multiplier (0: 3): the peer is declared
	// down after this many intervals without a packet.
	Multiplier uint8
}

// The defaults: a dead peer is detected in 0.9 s.
const (
	DefaultInterval   = 300 * time.Millisecond
	DefaultMultiplier = 3
	// MinInterval is the least interval accepted: below it a Go timer on a
	// loaded node misses deadlines and sessions flap.
	MinInterval = 10 * time.Millisecond
	// MaxInterval is the most accepted (the wire field allows 71 minutes).
	MaxInterval  = 60 * time.Second
	slowInterval = time.Second // RFC 5880 §6.8.3: while not Up
)

// WithDefaults fills unset timers.
func (c Config) WithDefaults() Config {
	if c.MinTx == 0 {
		c.MinTx = DefaultInterval
	}
	if c.MinRx == 0 {
		c.MinRx = DefaultInterval
	}
	if c.Multiplier == 0 {
		c.Multiplier = DefaultMultiplier
	}
	return c
}

// Validate names the setting at fault; field prefixes the names.
func (c Config) Validate(field string) error {
	for _, t := range []struct {
		name string
		d    time.Duration
	}{{"min_tx", c.MinTx}, {"min_rx", c.MinRx}} {
		if t.d != 0 && (t.d < MinInterval || t.d > MaxInterval) {
			return fmt.Errorf("%s%s %s: want %s to %s (0: %s)", field, t.name, t.d, MinInterval, MaxInterval, DefaultInterval)
		}
		if t.d%time.Millisecond != 0 {
			return fmt.Errorf("%s%s %s: whole milliseconds", field, t.name, t.d)
		}
	}
	return nil
}

// DetectTime is how long a silent peer stays Up at most, if the peer
// sends as fast as this side asks.
func (c Config) DetectTime() time.Duration {
	c = c.WithDefaults()
	return time.Duration(c.Multiplier) * c.MinRx
}

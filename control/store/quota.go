package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// DefaultStoreQuota is etcd's default backend quota (2 GiB).
const DefaultStoreQuota = 2 << 30

// quotaHighWater is the share of the quota past which the API refuses
// writes that add data, before etcd's own NOSPACE alarm refuses every
// write (deletes included).
const quotaHighWater = 0.9

// storeUsage is what the last look at etcd found: database size and
// alarms; kept by Store.Check, read by every write.
type storeUsage struct {
	dbSize  atomic.Int64
	pending atomic.Int64 // bytes this store wrote since dbSize was read
	alarms  atomic.Value // string: active alarms, "" for none
}

// SetQuota tells the store etcd's backend quota (for the high-water mark).
func (s *Store) SetQuota(bytes int64) { s.quota = bytes }

// Check looks at etcd's database size and alarms (every endpoint); the
// API's write guard and /readyz use what it finds. It fails while an
// alarm is raised: etcd then refuses writes.
func (s *Store) Check(ctx context.Context) error {
	var size int64
	for _, ep := range s.client.Endpoints() {
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if st, err := s.client.Status(sctx, ep); err == nil {
			size = max(size, st.DbSize)
		}
		cancel()
	}
	s.usage.dbSize.Store(size)
	s.usage.pending.Store(0)
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := s.client.AlarmList(actx)
	if err != nil {
		return fmt.Errorf("list etcd alarms: %w", err) // unknown: the last answer stands
	}
	var alarms []string
	for _, a := range resp.Alarms {
		if a.Alarm != pb.AlarmType_NONE {
			alarms = append(alarms, a.Alarm.String())
		}
	}
	s.usage.alarms.Store(strings.Join(alarms, ","))
	if len(alarms) > 0 {
		return fmt.Errorf("etcd alarm %s: etcd refuses writes (README: \"When etcd is full\"): %w", strings.Join(alarms, ","), ErrEtcdAlarm)
	}
	return nil
}

// ErrEtcdAlarm: etcd has an alarm raised and refuses writes.
var ErrEtcdAlarm = errors.New("etcd alarm")

// Usage is the database size and the active alarms found by the last Check.
func (s *Store) Usage() (dbSize int64, alarms string) {
	a, _ := s.usage.alarms.Load().(string)
	return s.usage.dbSize.Load(), a
}

// overQuota says why a write that adds data must be refused, or "".
func (s *Store) OverQuota() string {
	size, alarms := s.Usage()
	size += s.usage.pending.Load() // a fast writer cannot overshoot between two looks
	switch {
	case alarms != "":
		return "etcd alarm " + alarms + ": writes are refused until it is cleared"
	case s.quota > 0 && float64(size) > quotaHighWater*float64(s.quota):
		return fmt.Sprintf("etcd database %d MiB is past %.0f%% of its %d MiB quota: only deletes are accepted (README: \"When etcd is full\")",
			size>>20, quotaHighWater*100, s.quota>>20)
	}
	return ""
}

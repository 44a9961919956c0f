package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
)

// IPVS is what the node needs of a kernel IPVS table; *ipvs.Client has it.
type IPVS interface {
	Table(ctx context.Context) ([]ipvs.VirtualServer, error)
	// Lookup reads one service (nil: none). A table dump is not atomic,
	// so what a dump misses is confirmed with it.
	Lookup(ctx context.Context, key ipvs.ServiceKey) (*ipvs.VirtualServer, error)
	Apply(ctx context.Context, ops []ipvs.Op) error
}

// ipvsSink keeps the kernel's IPVS table equal to the plan for the
// services merlin owns. It keeps a model of what it last read or wrote, so
// that a pass diffs only the services that may have changed and a pass
// with nothing to change sends nothing; a full read replaces the model.
type ipvsSink struct {
	table  IPVS
	reader IPVS // background reads (its own socket, so applies need not wait)
	adopt  []netip.Prefix
	owned  *ownership

	model   map[ipvs.ServiceKey]*ipvs.VirtualServer // owned services as last read or written
	foreign map[ipvs.ServiceKey]bool                // kernel services merlin leaves alone
	valid   bool                                    // the model may be trusted

	// Background reads (sink_ipvs_drift.go) skip keys written meanwhile.
	writeGen uint64                     // counts applies
	readGen  uint64                     // counts synchronous full reads
	touched  map[ipvs.ServiceKey]uint64 // writeGen of the last write to each key
	// stale: keys whose model the kernel contradicted (a service or
	// destination gone behind merlin's back); diffed again at once.
	stale []ipvs.ServiceKey
}

func newIPVSSink(table IPVS, owned *ownership, adopt []netip.Prefix) *ipvsSink {
	return &ipvsSink{table: table, reader: table, owned: owned, adopt: adopt, touched: map[ipvs.ServiceKey]uint64{}}
}

// Read reads the whole kernel table: the owned part becomes the model,
// desired services under an adopt prefix become owned.
func (s *ipvsSink) Read(ctx context.Context, desired map[ipvs.ServiceKey]bool) (adopted []ipvs.ServiceKey, err error) {
	table, err := readTable(ctx, s.table, s.owned.keys)
	if err != nil {
		s.valid = false
		return nil, fmt.Errorf("read the kernel IPVS table: %w", err)
	}
	kv := SplitKernel(table, s.owned.keys, desired, s.adopt)
	for _, k := range kv.Adopt {
		s.owned.add(k)
	}
	for _, k := range kv.Forget {
		s.owned.remove(k)
	}
	s.model, s.foreign, s.valid = kv.Owned, kv.Foreign, true
	s.readGen++
	return kv.Adopt, s.owned.save()
}

// readTable dumps the table and confirms, one by one, the owned services
// the dump did not show: the kernel resumes a dump by position, so a
// service deleted during it (by merlin on its other socket, or by hand)
// can hide one that exists.
func readTable(ctx context.Context, t IPVS, owned map[ipvs.ServiceKey]bool) ([]ipvs.VirtualServer, error) {
	table, err := t.Table(ctx)
	if err != nil {
		return nil, err
	}
	seen := make(map[ipvs.ServiceKey]bool, len(table))
	for _, vs := range table {
		seen[vs.Service.Key.Canonical()] = true
	}
	for k := range owned {
		if seen[k] {
			continue
		}
		vs, err := t.Lookup(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("look up %s: %w", k, err)
		}
		if vs != nil {
			table = append(table, *vs)
		}
	}
	return table, nil
}

// Kernel is the model's entry for a key (nil: none); read-only.
func (s *ipvsSink) Kernel(k ipvs.ServiceKey) *ipvs.VirtualServer { return s.model[k] }

// Conflict: a desired service's key is taken by a service merlin leaves alone.
func (s *ipvsSink) Conflict(k ipvs.ServiceKey) error {
	if !s.owned.has(k) && s.foreign[k] {
		return errForeign(k)
	}
	return nil
}

// Diff is the ops that make the kernel's services at keys equal to want
// (a key missing from want is not desired).
func (s *ipvsSink) Diff(want map[ipvs.ServiceKey]*ipvs.VirtualServer, keys []ipvs.ServiceKey) []ipvs.Op {
	var w, have []ipvs.VirtualServer
	for _, k := range keys {
		if vs := want[k]; vs != nil {
			w = append(w, *vs)
		}
		if vs := s.model[k]; vs != nil {
			have = append(have, *vs)
		}
	}
	return ipvs.Diff(w, have)
}

// OpResult is the outcome of one op of a batch.
type OpResult struct {
	Op    ipvs.Op
	Err   error // nil: applied (or already so)
	Stale bool  // refused because the model was wrong; the model is corrected and the key diffed again
}

// Apply sends ops in one batch and returns each op's outcome; err is set
// when the batch as a whole failed or ownership could not be recorded.
// Deleting what is already gone succeeds: the desired state is reached.
func (s *ipvsSink) Apply(ctx context.Context, ops []ipvs.Op) ([]OpResult, error) {
	ownedBefore := map[ipvs.ServiceKey]bool{}
	for _, op := range ops {
		if op.Kind == ipvs.OpAddService {
			ownedBefore[op.Service.Key] = s.owned.has(op.Service.Key)
			s.owned.add(op.Service.Key)
		}
	}
	if err := s.owned.save(); err != nil {
		return nil, fmt.Errorf("record owned services before creating them: %w", err)
	}
	s.writeGen++
	for _, op := range ops {
		s.touched[op.Service.Key] = s.writeGen
	}
	applyErr := s.table.Apply(ctx, ops)
	failed, whole := opErrors(len(ops), applyErr)
	results := make([]OpResult, len(ops))
	for i, op := range ops {
		err := failed[i]
		if alreadyGone(op.Kind, err) {
			err = nil
		}
		results[i] = OpResult{Op: op, Err: err}
		switch {
		case err == nil:
			s.applyToModel(op)
		case s.forgetMissing(op, err):
			results[i].Stale = true
		case alreadyThere(op, err, ownedBefore):
			s.relearn(ctx, op.Service.Key)
			results[i].Stale = true
		case errors.Is(err, ipvs.ErrOutcomeUnknown), errors.Is(err, ipvs.ErrNotSent):
			s.valid = false // read the kernel again before trusting the model
		case op.Kind == ipvs.OpAddService:
			s.owned.remove(op.Service.Key) // not created: perhaps someone else's
		}
	}
	if err := s.owned.save(); err != nil {
		return results, fmt.Errorf("record owned services: %w", err)
	}
	if whole {
		s.valid = false
		return results, fmt.Errorf("apply %d IPVS ops: %w", len(ops), applyErr)
	}
	return results, nil
}

// opErrors maps an Apply error to its ops by index; whole: the batch
// failed as a whole (not a *BatchError), so every op carries it.
func opErrors(n int, err error) (failed map[int]error, whole bool) {
	failed = map[int]error{}
	var be *ipvs.BatchError
	switch {
	case err == nil:
	case errors.As(err, &be):
		for _, f := range be.Failed {
			failed[f.Index] = f.Err
		}
	default:
		for i := range n {
			failed[i] = err
		}
		whole = true
	}
	return failed, whole
}

// alreadyGone: a delete the kernel answers with "no such service" or "no
// such destination" found the desired state already there.
func alreadyGone(k ipvs.OpKind, err error) bool {
	switch k {
	case ipvs.OpDeleteService:
		return errors.Is(err, unix.ESRCH)
	case ipvs.OpDeleteDestination:
		return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
	}
	return false
}

// forgetMissing corrects the model where the kernel answered that what it
// holds is not there (ESRCH: no such service; ENOENT on a destination
// update: no such destination), so that the next diff recreates it instead
// of waiting for a full read. It reports whether it did.
func (s *ipvsSink) forgetMissing(op ipvs.Op, err error) bool {
	k := op.Service.Key
	vs := s.model[k]
	switch {
	case vs == nil:
		return false
	case errors.Is(err, unix.ESRCH) && op.Kind != ipvs.OpAddService:
		delete(s.model, k)
	case errors.Is(err, unix.ENOENT) && op.Kind == ipvs.OpUpdateDestination:
		s.model[k] = withDestination(vs, ipvs.Op{Kind: ipvs.OpDeleteDestination, Destination: op.Destination})
	default:
		return false
	}
	s.stale = append(s.stale, k)
	return true
}

// alreadyThere: an add found what it adds in the kernel — a destination,
// or a service merlin already owned — so the model missed it (a dump that
// hid it). The service stays merlin's.
func alreadyThere(op ipvs.Op, err error, ownedBefore map[ipvs.ServiceKey]bool) bool {
	if !errors.Is(err, unix.EEXIST) {
		return false
	}
	return op.Kind == ipvs.OpAddDestination || (op.Kind == ipvs.OpAddService && ownedBefore[op.Service.Key])
}

// relearn reads one service back into the model (or, failing that, makes
// the next pass read the whole table) and has it diffed again.
func (s *ipvsSink) relearn(ctx context.Context, k ipvs.ServiceKey) {
	vs, err := s.table.Lookup(ctx, k)
	switch {
	case err != nil:
		s.valid = false
	case vs == nil:
		delete(s.model, k)
	default:
		s.model[k] = vs
	}
	s.stale = append(s.stale, k)
}

// TakeStale returns the keys to diff again because the kernel contradicted
// the model (see forgetMissing).
func (s *ipvsSink) TakeStale() []ipvs.ServiceKey {
	keys := s.stale
	s.stale = nil
	return keys
}

// applyToModel records a successful op. Model entries are replaced, never
// modified, so that a background read can hold a cheap snapshot.
func (s *ipvsSink) applyToModel(op ipvs.Op) {
	k := op.Service.Key
	switch op.Kind {
	case ipvs.OpAddService:
		s.model[k] = &ipvs.VirtualServer{Service: op.Service}
	case ipvs.OpUpdateService:
		if vs := s.model[k]; vs != nil {
			c := *vs
			c.Service.Config = op.Service.Config
			s.model[k] = &c
		}
	case ipvs.OpDeleteService:
		delete(s.model, k)
		s.owned.remove(k)
	case ipvs.OpAddDestination, ipvs.OpUpdateDestination, ipvs.OpDeleteDestination:
		if vs := s.model[k]; vs != nil {
			s.model[k] = withDestination(vs, op)
		}
	}
}

// withDestination is vs with op applied, in a new array of exactly the
// destinations' size (appending to a copy grew its array to about twice
// what the service needs).
func withDestination(vs *ipvs.VirtualServer, op ipvs.Op) *ipvs.VirtualServer {
	c := *vs
	i := slices.IndexFunc(vs.Destinations, func(d ipvs.Destination) bool { return d.Key == op.Destination.Key })
	switch {
	case op.Kind == ipvs.OpDeleteDestination && i >= 0:
		c.Destinations = slices.Concat(vs.Destinations[:i], vs.Destinations[i+1:])
	case op.Kind == ipvs.OpDeleteDestination:
	case i >= 0:
		c.Destinations = slices.Clone(vs.Destinations)
		c.Destinations[i] = op.Destination
	default:
		c.Destinations = slices.Concat(vs.Destinations, []ipvs.Destination{op.Destination})
	}
	return &c
}

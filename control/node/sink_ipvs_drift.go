package node

import (
	"context"
	"maps"
	"runtime"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
)

// driftResult is what a background kernel read found: owned services
// whose kernel state differs from the model (nil: gone from the kernel).
type driftResult struct {
	writeGen, readGen uint64
	drift             map[ipvs.ServiceKey]*ipvs.VirtualServer
	foreign           map[ipvs.ServiceKey]bool
	err               error
}

// DriftCheck returns a read of the whole table, compared with a snapshot
// of the model taken now, for the caller to run in the background; Repair
// takes its result.
func (s *ipvsSink) DriftCheck() func(context.Context) driftResult {
	model := maps.Clone(s.model) // values are replaced, never modified: see applyToModel
	owned := maps.Clone(s.owned.keys)
	writeGen, readGen := s.writeGen, s.readGen
	table := s.reader
	return func(ctx context.Context) driftResult {
		res := driftResult{writeGen: writeGen, readGen: readGen}
		t, err := readTable(ctx, table, owned)
		if err != nil {
			res.err = err
			return res
		}
		read := map[ipvs.ServiceKey]*ipvs.VirtualServer{}
		res.foreign = map[ipvs.ServiceKey]bool{}
		for i := range t {
			k := t[i].Service.Key.Canonical()
			if owned[k] {
				read[k] = &t[i]
			} else {
				res.foreign[k] = true
			}
		}
		res.drift = map[ipvs.ServiceKey]*ipvs.VirtualServer{}
		n := 0
		for k, m := range model {
			if n++; n%256 == 0 {
				runtime.Gosched() // background work: event passes go first
			}
			r, ok := read[k]
			switch {
			case !ok:
				res.drift[k] = nil
			case len(ipvs.Diff([]ipvs.VirtualServer{*m}, []ipvs.VirtualServer{*r})) > 0:
				res.drift[k] = r
			}
		}
		for k, r := range read {
			if _, ok := model[k]; !ok {
				res.drift[k] = r
			}
		}
		return res
	}
}

// Repair puts what a background read found into the model, except for
// keys written since the read began, and returns the keys to diff again.
// ok is false when a synchronous read replaced the model meanwhile.
func (s *ipvsSink) Repair(res driftResult) (keys []ipvs.ServiceKey, ok bool) {
	if res.readGen != s.readGen || !s.valid {
		return nil, false
	}
	s.foreign = res.foreign
	for k, vs := range res.drift {
		if s.touched[k] > res.writeGen {
			continue
		}
		if vs == nil {
			delete(s.model, k)
		} else {
			s.model[k] = vs
		}
		keys = append(keys, k)
	}
	clear(s.touched)
	return keys, true
}

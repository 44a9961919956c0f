//go:build linux

package xdpstats

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Programs are the counter programs and their maps loaded on their own —
// not pinned, not attached — for benchmarks (BPF_PROG_TEST_RUN) and tests.
type Programs struct {
	XDP, Forwarded, Replies *ebpf.Program
	objs                    *countersObjects
}

// LoadPrograms loads the programs with maps of the given sizes.
func LoadPrograms(maxVIPs, maxServers int) (*Programs, error) {
	spec, err := loadCounters()
	if err != nil {
		return nil, err
	}
	for name, n := range mapSizes(maxVIPs, maxServers) {
		spec.Maps[name].MaxEntries = uint32(n)
		spec.Maps[name].Pinning = ebpf.PinNone
	}
	objs := &countersObjects{}
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		return nil, fmt.Errorf("load counter programs: %w", err)
	}
	return &Programs{XDP: objs.CountVips, Forwarded: objs.CountForwarded, Replies: objs.CountReplies, objs: objs}, nil
}

// SetKeys makes the maps hold the VIP keys and the NAT and tunnel server
// keys given (direct-routing keys need the neighbour table: see Counter).
func (p *Programs) SetKeys(keys Keys) error {
	var errs []error
	d := planKeys(keys)
	var h held
	zero, vipZero := perCPUZero(), perCPUVIPZero()
	for _, sync := range []func() (int, error){
		func() (int, error) { return syncMap(p.objs.Vips4, &h.vips4, d.vips.v4, vipZero) },
		func() (int, error) { return syncMap(p.objs.Vips6, &h.vips6, d.vips.v6, vipZero) },
		func() (int, error) { return syncMap(p.objs.Unmatched4, &h.unmatched4, d.unmatched.v4, vipZero) },
		func() (int, error) { return syncMap(p.objs.Forwarded4, &h.forwarded4, d.forwarded.v4, zero) },
		func() (int, error) { return syncMap(p.objs.Forwarded6, &h.forwarded6, d.forwarded.v6, zero) },
	} {
		n, err := sync()
		if n > 0 {
			err = errors.Join(err, fmt.Errorf("%d keys did not fit", n))
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close unloads the programs and maps.
func (p *Programs) Close() error { return p.objs.Close() }

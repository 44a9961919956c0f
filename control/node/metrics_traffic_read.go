package node

import (
	"context"
	"sync"
	"time"

	"github.com/merlin-ipvs/merlin/datapath/ipvs"
	"github.com/merlin-ipvs/merlin/internal/lowprio"
)

// RunReads reads the kernel's IPVS counters and the eBPF counters in the
// background until ctx ends, each on its own clock (one hanging kernel
// read does not hold the other back): first once the first plan names
// merlin's services, then ReadInterval after each read ends. Reading
// 100,000 real servers' counters takes longer than a scrape may (seconds
// natively, tens of seconds in an emulated VM), so scrapes write the last
// read and its age instead of reading.
func (t *Traffic) RunReads(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-t.index.first:
	}
	var wg sync.WaitGroup
	if t.kernel != nil {
		wg.Go(func() { t.every(ctx, func() { t.readIPVS(ctx) }) })
	}
	if t.counters != nil {
		wg.Go(func() { t.every(ctx, t.readCounters) })
	}
	wg.Wait()
}

// backgroundNice is the nice value of the node's long background reads
// (the kernel's counters, the drift check's whole table): on a machine
// with few CPUs, scrapes, API calls and event passes go first.
const backgroundNice = 10

// every runs read now and ReadInterval after each run ends, niced.
func (t *Traffic) every(ctx context.Context, read func()) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		lowprio.Run(backgroundNice, read)
		timer.Reset(t.opts.ReadInterval)
	}
}

// readIPVS reads the kernel's counters of merlin's services.
func (t *Traffic) readIPVS(parent context.Context) {
	r := &partRead{began: time.Now()}
	ctx, cancel := context.WithTimeout(parent, t.opts.ReadTimeout)
	defer cancel()
	budget := scrapeWait
	keep := func(k ipvs.ServiceKey) bool {
		t.waitForScrapes(ctx, &budget)
		_, ok := t.index.service(k.Canonical())
		return ok
	}
	render := t.newIPVSRender()
	err := t.kernel.StatsEach(ctx, keep, render.add)
	if err != nil && ctx.Err() == nil {
		// A dump the kernel cut short (the table changed under it) is
		// read once more; a second failure exports what it got.
		again := t.newIPVSRender()
		if err2 := t.kernel.StatsEach(ctx, keep, again.add); again.read >= render.read {
			render, err = again, err2
		}
	}
	r.seconds, r.complete = time.Since(r.began).Seconds(), err == nil
	r.families = render.families()
	if parent.Err() == nil { // not when merlin stops; a timeout exports what it got
		t.ipvsRead.Store(r)
	}
}

// readCounters reads the eBPF maps; a failed read keeps the last one (its
// age grows), counters that are off export none.
func (t *Traffic) readCounters() {
	if !t.counters.Status().On {
		t.countersRead.Store(nil)
		return
	}
	budget := scrapeWait
	t.waitForScrapes(context.Background(), &budget)
	began := time.Now()
	families, err := t.readCounterFamilies()
	if err != nil {
		return
	}
	t.countersRead.Store(&partRead{began: began, seconds: time.Since(began).Seconds(), complete: true, families: families})
}

// scrapeWait bounds how long one background read waits for scrapes in
// all: clients that scrape back to back must not stop the counters.
const scrapeWait = 30 * time.Second

// waitForScrapes pauses the background read while a scrape is written, so
// that on a small machine the scrape has the CPU and answers in time; it
// spends at most what is left of budget.
func (t *Traffic) waitForScrapes(ctx context.Context, budget *time.Duration) {
	const step = 10 * time.Millisecond
	for t.writing.Load() > 0 && ctx.Err() == nil && *budget > 0 {
		time.Sleep(step)
		*budget -= step
	}
}

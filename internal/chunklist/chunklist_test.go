package chunklist

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

type entry struct{ key, val int }

func keyOf(e entry) int { return e.key }

// Random splices of runs (entries with equal keys) into lists of up to a
// few thousand entries, growing in even rounds and shrinking in odd ones: each list equals the same splices of a plain
// slice, runs and lookups agree, the lists spliced from are unchanged, and
// chunks stay between a quarter full and twice full (no chunk index
// growing with edits).
func TestSpliceEqualsSlices(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		var plain []entry
		for k := range rng.IntN(3000) {
			for v := range rng.IntN(3) {
				plain = append(plain, entry{2 * k, v})
			}
		}
		l := From(slices.Clone(plain))
		for step := range 400 {
			keys := randomKeys(rng, 2*len(plain)/2+10)
			with := func(k int) []entry {
				n := rng.IntN(4) // 0: the run goes
				if round%2 == 1 && rng.IntN(5) > 0 {
					n = 0 // odd rounds mostly delete
				}
				run := make([]entry, n)
				for i := range run {
					run[i] = entry{k, step*10 + i}
				}
				return run
			}
			runs := map[int][]entry{}
			for _, k := range keys {
				runs[k] = with(k)
			}
			fixed := func(k int) []entry { return runs[k] }
			before, beforeSlice := l, l.Slice()
			l = Splice(l, keys, keyOf, cmp.Compare, fixed)
			plain = spliceSlice(plain, keys, keyOf, cmp.Compare, fixed)
			if got := l.Slice(); !slices.Equal(got, plain) || l.Len() != len(plain) {
				t.Fatalf("round %d step %d: %d entries, want %d (keys %v)", round, step, l.Len(), len(plain), keys)
			}
			if !slices.Equal(before.Slice(), beforeSlice) {
				t.Fatalf("round %d step %d: the list spliced from changed", round, step)
			}
			checkChunks(t, l)
			if n := rng.IntN(len(plain) + 2); !slices.Equal(l.Head(n), plain[:min(n, len(plain))]) {
				t.Fatalf("head of %d: %v", n, l.Head(n))
			}
			k := rng.IntN(len(plain) + 20)
			lo, _ := slices.BinarySearchFunc(plain, k, func(e entry, k int) int { return cmp.Compare(e.key, k) })
			hi := lo
			for hi < len(plain) && plain[hi].key == k {
				hi++
			}
			if run := Run(l, k, keyOf, cmp.Compare); !slices.Equal(run, plain[lo:hi]) {
				t.Fatalf("run of %d: %v, want %v", k, run, plain[lo:hi])
			}
		}
	}
}

// randomKeys is up to 8 sorted, unique keys below limit.
func randomKeys(rng *rand.Rand, limit int) []int {
	var keys []int
	for range 1 + rng.IntN(8) {
		keys = append(keys, rng.IntN(limit))
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

func checkChunks(t *testing.T, l List[entry]) {
	t.Helper()
	for i, c := range l.chunks {
		if len(c) == 0 || len(c) > 2*chunkLen[entry]() {
			t.Fatalf("chunk %d of %d has %d entries", i, len(l.chunks), len(c))
		}
	}
	if want := l.Len()/(chunkLen[entry]()/4) + 2; len(l.chunks) > want {
		t.Fatalf("%d chunks for %d entries", len(l.chunks), l.Len())
	}
}

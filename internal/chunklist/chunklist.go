// Package chunklist is an immutable sorted list kept in chunks: a list
// with a few runs replaced shares every chunk it does not touch with the
// list it came from, so the edit costs the chunks it touches and the chunk
// index (a slice header per chunk of about 6 KiB), not the list's length. The node
// planner keeps its sorted lists in it, so that one change costs the same
// at 100 services as at 10,000. Pure Go; no privileges.
package chunklist

import (
	"iter"
	"slices"
	"sort"
	"unsafe"
)

// chunkBytes is about what a chunk holds when a list is chunked: an edit
// copies a chunk (or two) and the chunk index (a slice header, 24 bytes,
// per chunk), and at 10,000 VIP states of ~170 bytes or 100,000 pointers
// the two are about even at this size.
const chunkBytes = 6 << 10

// chunkLen is the most entries a chunk of E takes when a list is chunked;
// an edit leaves chunks of at least half that (but the last) and at most
// twice, so the chunk index stays about len/chunkLen long.
func chunkLen[E any]() int {
	var e E
	return max(16, chunkBytes/max(int(unsafe.Sizeof(e)), 1))
}

// List is an immutable list, sorted by whatever key its builder uses. The
// zero List is empty.
type List[E any] struct {
	chunks [][]E // each non-empty; never changed once in a List
	n      int
}

// From is a List of s; s must not change afterwards (the List shares it).
func From[E any](s []E) List[E] {
	return List[E]{chunks: chunk(nil, s), n: len(s)}
}

// chunk appends s to out in chunks of at most chunkLen, as even as can be.
func chunk[E any](out [][]E, s []E) [][]E {
	if len(s) == 0 {
		return out
	}
	k := (len(s) + chunkLen[E]() - 1) / chunkLen[E]()
	for i := range k {
		lo, hi := len(s)*i/k, len(s)*(i+1)/k
		out = append(out, s[lo:hi:hi])
	}
	return out
}

// Len is the number of entries.
func (l List[E]) Len() int { return l.n }

// All yields the entries in order.
func (l List[E]) All() iter.Seq[E] {
	return func(yield func(E) bool) {
		for _, c := range l.chunks {
			for _, e := range c {
				if !yield(e) {
					return
				}
			}
		}
	}
}

// Slice is the entries in a new slice.
func (l List[E]) Slice() []E {
	out := make([]E, 0, l.n)
	for _, c := range l.chunks {
		out = append(out, c...)
	}
	return out
}

// Head is the first n entries (all when fewer) in a new slice.
func (l List[E]) Head(n int) []E {
	out := make([]E, 0, min(n, l.n))
	for _, c := range l.chunks {
		if len(out)+len(c) >= n {
			return append(out, c[:n-len(out)]...)
		}
		out = append(out, c...)
	}
	return out
}

// Run is the entries whose key is k (the list sorted by key, compared by
// cmp). It is shared with the list when in one chunk: never change it.
func Run[E, K any](l List[E], k K, key func(E) K, cmp func(a, b K) int) []E {
	lo, hi := runChunks(l.chunks, k, key, cmp)
	var out []E
	for c := lo; c <= hi && c < len(l.chunks); c++ {
		ch := l.chunks[c]
		i := sort.Search(len(ch), func(i int) bool { return cmp(key(ch[i]), k) >= 0 })
		j := i
		for j < len(ch) && cmp(key(ch[j]), k) == 0 {
			j++
		}
		if lo == hi {
			return ch[i:j:j]
		}
		out = append(out, ch[i:j]...)
	}
	return out
}

// Find is the first entry whose key is k, if any.
func Find[E, K any](l List[E], k K, key func(E) K, cmp func(a, b K) int) (E, bool) {
	if run := Run(l, k, key, cmp); len(run) > 0 {
		return run[0], true
	}
	var zero E
	return zero, false
}

// runChunks is the chunks that hold k's run or where it would go: lo is
// the first chunk whose last key is not below k (len(chunks) when every
// key is), hi the last chunk with k in it (lo when none).
func runChunks[E, K any](chunks [][]E, k K, key func(E) K, cmp func(a, b K) int) (lo, hi int) {
	lo = sort.Search(len(chunks), func(i int) bool { return cmp(key(chunks[i][len(chunks[i])-1]), k) >= 0 })
	hi = lo
	for hi+1 < len(chunks) && cmp(key(chunks[hi+1][0]), k) == 0 {
		hi++
	}
	return lo, hi
}

// Splice is l with the run of each of keys (sorted, unique) replaced by
// with(key); l is unchanged. Chunks no key falls in are shared.
func Splice[E, K any](l List[E], keys []K, key func(E) K, cmp func(a, b K) int, with func(K) []E) List[E] {
	out := List[E]{chunks: make([][]E, 0, len(l.chunks)+1)}
	next := 0 // the first chunk of l not yet in out
	for i := 0; i < len(keys); {
		lo, hi := runChunks(l.chunks, keys[i], key, cmp)
		lo, hi = min(lo, len(l.chunks)-1), min(hi, len(l.chunks)-1) // past the end: the last chunk
		lo = max(lo, next)
		// The keys falling in the same chunks are spliced together.
		j := i + 1
		for ; j < len(keys); j++ {
			klo, khi := runChunks(l.chunks, keys[j], key, cmp)
			if min(klo, len(l.chunks)-1) > hi {
				break
			}
			hi = max(hi, min(khi, len(l.chunks)-1))
		}
		out.chunks = append(out.chunks, l.chunks[next:max(lo, next)]...)
		var region []E
		for c := lo; c <= hi && c >= 0; c++ {
			region = append(region, l.chunks[c]...)
		}
		next = max(hi+1, next)
		region = spliceSlice(region, keys[i:j], key, cmp, with)
		// A region left small takes in the chunk after it, so that chunks
		// stay at least half full.
		if len(region) < chunkLen[E]()/2 && next < len(l.chunks) && (j == len(keys) || before(l.chunks[next], keys[j], key, cmp)) {
			region = append(region, l.chunks[next]...)
			next++
		}
		out.chunks = rechunk(out.chunks, region)
		i = j
	}
	out.chunks = append(out.chunks, l.chunks[next:]...)
	for _, c := range out.chunks {
		out.n += len(c)
	}
	return out
}

// before reports whether chunk's last key is below k (k falls after it).
func before[E, K any](chunk []E, k K, key func(E) K, cmp func(a, b K) int) bool {
	return cmp(key(chunk[len(chunk)-1]), k) < 0
}

// rechunk appends region to out as one chunk, or as even chunks of at most
// chunkLen when it outgrew twice that.
func rechunk[E any](out [][]E, region []E) [][]E {
	if len(region) == 0 {
		return out
	}
	if len(region) <= 2*chunkLen[E]() {
		return append(out, region[:len(region):len(region)])
	}
	return chunk(out, region)
}

// spliceSlice is a copy of list (sorted by key) with the run of each of
// keys (sorted) replaced by with(key), in one pass.
func spliceSlice[E, K any](list []E, keys []K, key func(E) K, cmp func(a, b K) int, with func(K) []E) []E {
	out := make([]E, 0, len(list)+len(keys))
	i := 0
	for _, k := range keys {
		j, _ := slices.BinarySearchFunc(list[i:], k, func(e E, k K) int { return cmp(key(e), k) })
		j += i
		out = append(out, list[i:j]...)
		for j < len(list) && cmp(key(list[j]), k) == 0 {
			j++
		}
		out = append(out, with(k)...)
		i = j
	}
	return append(out, list[i:]...)
}

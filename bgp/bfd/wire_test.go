package bfd

import (
	"net/netip"
	"sync"
)

// wire is a test network: every manager on it has one address, and a
// datagram sent to an address reaches that manager's listener with TTL
// 255 unless the wire is cut.
type wire struct {
	mu        sync.Mutex
	listeners map[netip.Addr]chan datagram
	cut       bool
}

type datagram struct {
	src netip.Addr
	ttl int
	b   []byte
}

func newWire() *wire { return &wire{listeners: map[netip.Addr]chan datagram{}} }

func (w *wire) setCut(cut bool) {
	w.mu.Lock()
	w.cut = cut
	w.mu.Unlock()
}

// inject delivers a datagram to addr as if src had sent it.
func (w *wire) inject(addr, src netip.Addr, ttl int, b []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ch := w.listeners[addr]; ch != nil {
		ch <- datagram{src: src, ttl: ttl, b: b} // the queue has room for a test's few
	}
}

// host is one manager's view of the wire.
type host struct {
	w    *wire
	addr netip.Addr
}

func (h host) listen(deliver func(netip.Addr, int, []byte)) (func(), error) {
	ch := make(chan datagram, 64)
	h.w.mu.Lock()
	h.w.listeners[h.addr] = ch
	h.w.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range ch {
			deliver(d.src, d.ttl, d.b)
		}
	}()
	return func() {
		h.w.mu.Lock()
		delete(h.w.listeners, h.addr)
		h.w.mu.Unlock()
		close(ch)
		<-done
	}, nil
}

func (h host) open(peer, _ netip.Addr) (sender, error) { return &hostSender{h: h, peer: peer}, nil }

type hostSender struct {
	h    host
	peer netip.Addr
}

func (s *hostSender) send(b []byte) error {
	s.h.w.mu.Lock() // held while sending: a listener closes its queue under it
	defer s.h.w.mu.Unlock()
	ch, cut := s.h.w.listeners[s.peer], s.h.w.cut
	if cut || ch == nil {
		return nil // lost, as UDP is
	}
	select {
	case ch <- datagram{src: s.h.addr, ttl: 255, b: append([]byte(nil), b...)}:
	default: // a full queue drops, as a socket buffer does
	}
	return nil
}

func (s *hostSender) close() {}

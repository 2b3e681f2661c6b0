package consumer

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Sizes and bounds of wireConn.
const (
	// wireReadBuffer serves paho's reads (a 1-byte header, then small
	// io.ReadFull calls per packet) from memory; 64 KiB holds several full
	// TLS records, so one tls.Conn.Read can decrypt all that has arrived.
	wireReadBuffer = 64 << 10
	// wireMaxPending bounds the bytes accepted but not yet taken by the
	// flusher; a Write beyond it waits, so a stalled peer stalls paho
	// instead of growing memory.
	wireMaxPending = 256 << 10
	// wireCloseTimeout bounds how long Close tries to write out what is
	// pending (paho's DISCONNECT) before it closes the connection anyway.
	// An earlier write deadline on the connection ends it sooner.
	wireCloseTimeout = time.Second
)

// wireConn is the net.Conn the consumer gives paho. paho writes every packet
// with its own conn.Write, so at high rates each PUBACK (4 bytes) cost one
// TLS record and one write syscall, and its reader decrypts in tiny reads;
// both showed as a large share of CPU in drain profiles.
//
// Reads go through a bufio.Reader. Writes are group-committed: Write copies
// p into a pending buffer and returns at once; one flusher goroutine writes
// all that is pending with one underlying Write, and what is written while
// that runs goes out together in the next one. An idle connection sends a
// lone packet at once (no timer, no Nagle-style wait). Bytes leave in the
// order of the Write calls.
//
// The acker writes its PUBACKs with writeNow instead: when nothing is
// pending and no write is under way it writes them itself, saving the
// flusher's wake-up (one per acknowledgement write, which on many cores
// cost as much as the write); otherwise they queue like a Write. Either
// way bytes leave in the order of the calls.
//
// Once an underlying write fails, the connection is closed (so paho's reader
// fails too and paho reconnects) and every later Write returns that error,
// text unchanged: paho looks for "use of closed network connection".
// Deadlines pass through to the underlying connection, so a write deadline
// applies to the flusher's writes (paho's Write itself no longer waits for
// the network, except when wireMaxPending bytes are already pending).
type wireConn struct {
	net.Conn // deadlines and addresses; Read, Write and Close are below

	r      *bufio.Reader // used by the one reading goroutine only
	closed atomic.Bool   // Close was called
	// broke is the underlying write failure that made the wireConn close
	// the connection itself (nil until one does): Read reports it.
	broke atomic.Pointer[error]

	mu      sync.Mutex
	more    sync.Cond // flusher waits: pending empty and not closing
	room    sync.Cond // writers wait: pending at wireMaxPending
	pending []byte
	spare   []byte // the buffer last written, reused for pending
	err     error  // first underlying write error, sticky
	closing bool
	// writing: an underlying Write is under way, the flusher's or
	// writeNow's; the other waits (the flusher) or queues (writeNow).
	writing bool
	waiters int // Writes waiting in room.Wait (tests observe it)

	done         chan struct{} // closed when the flusher has returned
	closeTimeout time.Duration // wireCloseTimeout; tests shorten it
}

// newWireConn wraps c and starts its flusher; Close stops it.
func newWireConn(c net.Conn) net.Conn {
	w := &wireConn{
		Conn:         c,
		r:            bufio.NewReaderSize(c, wireReadBuffer),
		done:         make(chan struct{}),
		closeTimeout: wireCloseTimeout,
	}
	w.more.L = &w.mu
	w.room.L = &w.mu
	go w.flush()
	return w
}

// Read reads from the buffer, refilling it from the connection.
//
// Once a failed write has made the wireConn close the connection, Read
// fails with that write's error, not with the read's "use of closed
// network connection": paho's reader takes that text for its own Close
// and reports nothing, so the client would stay "connected" to a dead
// broker until its next ping timed out (a broker killed while
// acknowledgements were being written went unnoticed for 44 s in the
// fault suite, and everything it was sent meanwhile was lost to it).
func (w *wireConn) Read(p []byte) (int, error) {
	if w.closed.Load() {
		return 0, net.ErrClosed // like a net.Conn, even with bytes buffered
	}
	n, err := w.r.Read(p)
	if err != nil {
		if broke := w.broke.Load(); broke != nil {
			return n, *broke
		}
	}
	return n, err
}

// breakOff records err, an underlying write's failure, for Read, and
// closes the connection, so that paho's reader fails with err and paho
// reconnects.
func (w *wireConn) breakOff(err error) {
	w.broke.CompareAndSwap(nil, &err)
	_ = w.Conn.Close()
}

// Write queues a copy of p for the flusher and returns len(p), or the error
// that ended the connection. It waits only while wireMaxPending bytes are
// pending.
func (w *wireConn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.pending) >= wireMaxPending && w.err == nil && !w.closing {
		w.waiters++
		w.room.Wait()
		w.waiters--
	}
	switch {
	case w.closing:
		return 0, net.ErrClosed
	case w.err != nil:
		return 0, w.err
	}
	if len(w.pending) == 0 {
		w.more.Signal() // the flusher waits only while nothing is pending
	}
	w.pending = append(w.pending, p...)
	return len(p), nil
}

// writeNow is Write for a caller that may wait for the network (the
// acker): when nothing is pending and no underlying write is under way it
// writes p on the connection itself, sparing the flusher a wake-up, and
// returns once p is written; otherwise it queues p as Write does. Bytes
// leave in the order of the Write and writeNow calls either way, and a
// failure ends the connection as a failed flusher write does.
func (w *wireConn) writeNow(p []byte) (int, error) {
	w.mu.Lock()
	if w.writing || len(w.pending) > 0 || w.closing || w.err != nil {
		w.mu.Unlock()
		return w.Write(p)
	}
	w.writing = true
	w.mu.Unlock()

	_, err := w.Conn.Write(p)

	w.mu.Lock()
	w.writing = false
	if err != nil && w.err == nil {
		w.err = err
		w.pending = nil
		w.room.Broadcast()
	}
	if len(w.pending) > 0 || w.closing {
		w.more.Signal() // the flusher waited for this write
	}
	w.mu.Unlock()
	if err != nil {
		w.breakOff(err)
		return 0, err
	}
	return len(p), nil
}

// flush is the flusher goroutine: it takes everything pending and writes it
// with one underlying Write, until Close leaves nothing pending or a write
// fails.
func (w *wireConn) flush() {
	defer close(w.done)
	w.mu.Lock()
	for {
		if w.writing || (len(w.pending) == 0 && !w.closing) {
			for w.writing || (len(w.pending) == 0 && !w.closing) {
				w.more.Wait()
			}
			// Woken by the first packet of what is often a burst (the
			// acknowledgements of a whole sink batch): let the writer
			// append the rest before taking it. Without other runnable
			// goroutines this returns at once, so a lone packet is not
			// delayed.
			w.mu.Unlock()
			runtime.Gosched()
			w.mu.Lock()
			continue // a writeNow may have begun meanwhile
		}
		if len(w.pending) == 0 { // closing, all written
			w.mu.Unlock()
			return
		}
		buf := w.pending
		w.pending = w.spare[:0]
		w.writing = true
		w.room.Broadcast()
		w.mu.Unlock()

		_, err := w.Conn.Write(buf)

		w.mu.Lock()
		w.writing = false
		if cap(buf) <= 2*wireMaxPending { // do not keep one huge Write's buffer
			w.spare = buf[:0]
		}
		if err != nil {
			w.err = err
			w.pending = nil
			w.room.Broadcast()
			w.mu.Unlock()
			w.breakOff(err)
			return
		}
	}
}

// Close writes out what is pending, for at most closeTimeout (or until the
// connection's write deadline), then closes the connection and waits for the
// flusher to return. It returns the error that kept pending bytes from the
// wire, if any, else the underlying Close's. Later calls return
// net.ErrClosed, like a net.Conn's; Writes from then on fail with it.
func (w *wireConn) Close() error {
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		return net.ErrClosed
	}
	w.closing = true
	w.closed.Store(true)
	w.more.Signal()
	w.room.Broadcast()
	w.mu.Unlock()

	t := time.NewTimer(w.closeTimeout)
	select {
	case <-w.done:
	case <-t.C:
	}
	t.Stop()
	err := w.Conn.Close() // also ends a flusher write stuck on the peer
	<-w.done

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return fmt.Errorf("wire: pending bytes not written: %w", w.err)
	}
	return err
}

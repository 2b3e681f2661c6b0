package consumer

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/decryptd/decryptd/internal/pki"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// fakeConn is a net.Conn that records its writes. With a gate, the first
// Write signals entered and then waits for the gate to close: a peer slow
// enough that everything written meanwhile piles up in the wireConn.
type fakeConn struct {
	gate     chan struct{}
	entered  chan struct{}
	writeErr error // every Write fails with it

	mu     sync.Mutex
	writes [][]byte
	events []string // "write" and "close", in order
	closed chan struct{}
	once   sync.Once
	first  bool
}

func newFakeConn(slow bool) *fakeConn {
	f := &fakeConn{closed: make(chan struct{}), entered: make(chan struct{})}
	if slow {
		f.gate = make(chan struct{})
	}
	return f
}

func (f *fakeConn) Write(p []byte) (int, error) {
	f.mu.Lock()
	first := !f.first
	f.first = true
	f.mu.Unlock()
	if first {
		close(f.entered)
		if f.gate != nil {
			select {
			case <-f.gate:
			case <-f.closed:
			}
		}
	}
	select {
	case <-f.closed:
		return 0, &net.OpError{Op: "write", Net: "fake", Err: net.ErrClosed}
	default:
	}
	if f.writeErr != nil {
		return 0, f.writeErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, bytes.Clone(p))
	f.events = append(f.events, "write")
	return len(p), nil
}

func (f *fakeConn) Read([]byte) (int, error) {
	<-f.closed
	return 0, &net.OpError{Op: "read", Net: "fake", Err: net.ErrClosed}
}

func (f *fakeConn) Close() error {
	err := error(&net.OpError{Op: "close", Net: "fake", Err: net.ErrClosed})
	f.once.Do(func() {
		f.mu.Lock()
		f.events = append(f.events, "close")
		f.mu.Unlock()
		close(f.closed)
		err = nil
	})
	return err
}

func (f *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (f *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (f *fakeConn) SetDeadline(time.Time) error      { return nil }
func (f *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// written returns all bytes written and the number of underlying Writes.
func (f *fakeConn) written() ([]byte, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return bytes.Join(f.writes, nil), len(f.writes)
}

// wireWait polls cond; the deadline only guards against a hang.
func wireWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// requireStopped fails unless c's flusher goroutine has returned.
func requireStopped(t *testing.T, c net.Conn) {
	t.Helper()
	select {
	case <-c.(*wireConn).done:
	default:
		t.Fatal("flusher goroutine still running after Close")
	}
}

// puback returns an MQTT PUBACK for id: the 4-byte packet the consumer sends
// most.
func puback(id uint16) []byte {
	return []byte{0x40, 0x02, byte(id >> 8), byte(id)}
}

func TestWireCoalesces(t *testing.T) {
	mixed := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 2+i%300) }
	tests := []struct {
		name      string
		n         int
		packet    func(i int) []byte
		wantCalls int // underlying Writes
	}{
		{"one packet goes out alone", 1, func(i int) []byte { return puback(uint16(i)) }, 1},
		{"acks behind a slow write", 1000, func(i int) []byte { return puback(uint16(i)) }, 2},
		{"mixed sizes behind a slow write", 500, mixed, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeConn(true)
			c := newWireConn(f)
			var want []byte
			for i := range tc.n {
				p := tc.packet(i)
				want = append(want, p...)
				if n, err := c.Write(p); n != len(p) || err != nil {
					t.Fatalf("Write %d = %d, %v", i, n, err)
				}
				if i == 0 {
					<-f.entered // the flusher is now stuck in the first write
				}
			}
			close(f.gate)
			if err := c.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			requireStopped(t, c)
			got, calls := f.written()
			if !bytes.Equal(got, want) {
				t.Fatalf("peer got %d bytes, want %d (or order differs)", len(got), len(want))
			}
			if calls != tc.wantCalls {
				t.Errorf("%d Writes became %d underlying writes, want %d", tc.n, calls, tc.wantCalls)
			}
		})
	}
}

// TestWireSendsAtOnce: on an idle connection a lone packet reaches the peer
// without a later Write or Close pushing it (no Nagle-style wait), so a
// request/response exchange such as CONNECT/CONNACK works.
func TestWireSendsAtOnce(t *testing.T) {
	a, b := net.Pipe()
	c := newWireConn(a)
	defer c.Close()
	for i := range 3 {
		if _, err := c.Write(puback(uint16(i))); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(b, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, puback(uint16(i))) {
			t.Fatalf("round %d: peer got %x", i, got)
		}
		go b.Write([]byte{0xd0, 0x00}) // PINGRESP; a pipe's Write waits for the Read
		resp := make([]byte, 2)
		if _, err := io.ReadFull(c, resp); err != nil || resp[0] != 0xd0 {
			t.Fatalf("round %d: read %x, %v", i, resp, err)
		}
	}
}

// TestWireBoundsPending: with the peer stalled, Write waits once
// wireMaxPending bytes are pending, and no underlying write carries more than
// that plus one Write.
func TestWireBoundsPending(t *testing.T) {
	const chunk = 4 << 10
	f := newFakeConn(true)
	c := newWireConn(f)
	w := c.(*wireConn)
	var want []byte
	write := func(i int) error {
		p := bytes.Repeat([]byte{byte(i)}, chunk)
		want = append(want, p...)
		_, err := c.Write(p)
		return err
	}
	if err := write(0); err != nil {
		t.Fatal(err)
	}
	<-f.entered
	total := 3 * wireMaxPending / chunk
	done := make(chan error, 1)
	go func() {
		for i := 1; i < total; i++ {
			if err := write(i); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	wireWait(t, "a Write to wait for room", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.waiters == 1
	})
	w.mu.Lock()
	pending := len(w.pending)
	w.mu.Unlock()
	if pending < wireMaxPending || pending > wireMaxPending+chunk {
		t.Errorf("pending %d bytes while a Write waits, want %d..%d", pending, wireMaxPending, wireMaxPending+chunk)
	}
	close(f.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	requireStopped(t, c)
	got, calls := f.written()
	if !bytes.Equal(got, want) {
		t.Fatalf("peer got %d bytes, want %d (or order differs)", len(got), len(want))
	}
	if calls >= total || calls < 3 {
		t.Errorf("%d Writes became %d underlying writes, want 3..%d", total, calls, total-1)
	}
	for i, p := range f.writes {
		if len(p) > wireMaxPending+chunk {
			t.Errorf("underlying write %d carried %d bytes, bound %d", i, len(p), wireMaxPending+chunk)
		}
	}
}

func TestWireCloseFlushes(t *testing.T) {
	disconnect := []byte{0xe0, 0x00}
	t.Run("pending behind a slow write", func(t *testing.T) {
		f := newFakeConn(true)
		c := newWireConn(f)
		c.(*wireConn).closeTimeout = time.Minute // the gate, not the timer, must end this
		want := append(puback(1), disconnect...)
		if _, err := c.Write(puback(1)); err != nil {
			t.Fatal(err)
		}
		<-f.entered
		if _, err := c.Write(disconnect); err != nil {
			t.Fatal(err)
		}
		closed := make(chan error, 1)
		go func() { closed <- c.Close() }()
		close(f.gate)
		if err := <-closed; err != nil {
			t.Fatalf("Close: %v", err)
		}
		requireStopped(t, c)
		got, _ := f.written()
		if !bytes.Equal(got, want) {
			t.Fatalf("peer got %x, want %x", got, want)
		}
		if ev := strings.Join(f.events, ","); ev != "write,write,close" {
			t.Errorf("events %s, want the writes before the close", ev)
		}
	})
	t.Run("DISCONNECT then Close over a pipe", func(t *testing.T) {
		a, b := net.Pipe()
		c := newWireConn(a)
		c.(*wireConn).closeTimeout = time.Minute
		got := make(chan []byte, 1)
		go func() { p, _ := io.ReadAll(b); got <- p }()
		var want []byte
		for i := range 100 {
			want = append(want, puback(uint16(i))...)
			if _, err := c.Write(puback(uint16(i))); err != nil {
				t.Fatal(err)
			}
		}
		want = append(want, disconnect...)
		if _, err := c.Write(disconnect); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		requireStopped(t, c)
		if p := <-got; !bytes.Equal(p, want) {
			t.Fatalf("peer got %d bytes, want %d", len(p), len(want))
		}
	})
}

// TestWireCloseBounded: a peer that never reads holds Close only until the
// close timeout or the write deadline; the connection is closed either way.
func TestWireCloseBounded(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		prepare func(c net.Conn) error
		wantErr error
	}{
		{"close timeout", 10 * time.Millisecond, func(net.Conn) error { return nil }, io.ErrClosedPipe},
		{"write deadline", time.Hour, func(c net.Conn) error {
			return c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
		}, os.ErrDeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe() // nobody reads b
			defer b.Close()
			c := newWireConn(a)
			c.(*wireConn).closeTimeout = tc.timeout
			if err := tc.prepare(c); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(puback(1)); err != nil {
				t.Fatal(err)
			}
			err := c.Close()
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Close = %v, want %v", err, tc.wantErr)
			}
			requireStopped(t, c)
			if _, err := a.Write([]byte{0}); !errors.Is(err, io.ErrClosedPipe) {
				t.Errorf("underlying conn not closed: Write = %v", err)
			}
		})
	}
}

func TestWireWriteError(t *testing.T) {
	tests := []struct {
		name string
		err  error
	}{
		{"closed elsewhere", &net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}},
		{"reset by peer", &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeConn(false)
			f.writeErr = tc.err
			c := newWireConn(f)
			if n, err := c.Write(puback(1)); n != 4 || err != nil {
				t.Fatalf("first Write = %d, %v; it is only queued", n, err)
			}
			<-f.closed // the failed flush closes the connection
			for range 2 {
				_, err := c.Write(puback(2))
				if !errors.Is(err, tc.err) || err.Error() != tc.err.Error() {
					t.Fatalf("Write after failure = %v, want %v unchanged", err, tc.err)
				}
			}
			// Read fails with the write's error, text unchanged: paho's
			// reader ignores "use of closed network connection" (its own
			// Close) and would not see the connection end until a ping
			// timed out; a reset must reach it as a reset.
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, tc.err) || err.Error() != tc.err.Error() {
				t.Errorf("Read after failure = %v, want %v unchanged", err, tc.err)
			}
			if err := c.Close(); !errors.Is(err, tc.err) {
				t.Errorf("Close = %v, want it to report %v", err, tc.err)
			}
			requireStopped(t, c)
		})
	}
}

// TestWireWriteNow: on an idle connection writeNow has written p when it
// returns (the caller wrote it, not the flusher); behind a write under way
// it queues, and bytes leave in the order of the calls; a failed writeNow
// ends the connection as a failed flush does.
func TestWireWriteNow(t *testing.T) {
	t.Run("idle: written on return", func(t *testing.T) {
		f := newFakeConn(false)
		c := newWireConn(f)
		w := c.(*wireConn)
		for i := range 3 {
			if n, err := w.writeNow(puback(uint16(i))); n != 4 || err != nil {
				t.Fatalf("writeNow %d = %d, %v", i, n, err)
			}
			if got, calls := f.written(); calls != i+1 || !bytes.Equal(got[4*i:], puback(uint16(i))) {
				t.Fatalf("after writeNow %d: %d writes, %x", i, calls, got)
			}
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		requireStopped(t, c)
	})
	t.Run("behind a write: queued in order", func(t *testing.T) {
		f := newFakeConn(true)
		c := newWireConn(f)
		w := c.(*wireConn)
		var want []byte
		for i := range 6 {
			p := puback(uint16(i))
			want = append(want, p...)
			var err error
			if i%2 == 0 {
				_, err = c.Write(p)
			} else {
				_, err = w.writeNow(p) // queues: a write is under way
			}
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				<-f.entered // the flusher is stuck in the first write
			}
		}
		close(f.gate)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		requireStopped(t, c)
		if got, _ := f.written(); !bytes.Equal(got, want) {
			t.Fatalf("peer got %x, want %x", got, want)
		}
	})
	t.Run("a writeNow under way holds the flusher back", func(t *testing.T) {
		f := newFakeConn(true)
		c := newWireConn(f)
		w := c.(*wireConn)
		done := make(chan error, 1)
		go func() { _, err := w.writeNow(puback(1)); done <- err }()
		<-f.entered // writeNow is in the underlying write
		for i := 2; i < 5; i++ {
			if _, err := c.Write(puback(uint16(i))); err != nil {
				t.Fatal(err)
			}
		}
		close(f.gate)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		requireStopped(t, c)
		want := bytes.Join([][]byte{puback(1), puback(2), puback(3), puback(4)}, nil)
		if got, _ := f.written(); !bytes.Equal(got, want) {
			t.Fatalf("peer got %x, want %x", got, want)
		}
	})
	t.Run("failure is sticky", func(t *testing.T) {
		werr := &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)}
		f := newFakeConn(false)
		f.writeErr = werr
		c := newWireConn(f)
		w := c.(*wireConn)
		if _, err := w.writeNow(puback(1)); !errors.Is(err, werr) {
			t.Fatalf("writeNow = %v, want %v", err, werr)
		}
		<-f.closed
		for _, write := range []func([]byte) (int, error){c.Write, w.writeNow} {
			if _, err := write(puback(2)); err == nil || err.Error() != werr.Error() {
				t.Fatalf("write after failure = %v, want %v unchanged", err, werr)
			}
		}
		if err := c.Close(); !errors.Is(err, werr) {
			t.Errorf("Close = %v, want it to report %v", err, werr)
		}
		requireStopped(t, c)
	})
}

// mqttStream returns the bytes of a run of packets as a broker sends them to
// the consumer: PUBLISHes of assorted sizes between small control packets.
func mqttStream(t testing.TB, n int) []byte {
	var buf bytes.Buffer
	for i := range n {
		pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		pub.Qos = 1
		pub.MessageID = uint16(i + 1)
		pub.TopicName = fmt.Sprintf("dev/d%03d/evt", i%100)
		pub.Payload = bytes.Repeat([]byte{byte(i)}, (i*37)%2000)
		if err := pub.Write(&buf); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			if err := packets.NewControlPacket(packets.Pingresp).Write(&buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	return buf.Bytes()
}

// TestWireRead reads a packet stream over loopback TCP with paho's own
// parser, raw and through wireConn, and checks both give back the bytes sent.
func TestWireRead(t *testing.T) {
	stream := mqttStream(t, 2000)
	for _, wrap := range []bool{false, true} {
		t.Run(fmt.Sprintf("wire=%t", wrap), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			sent := make(chan error, 1)
			go func() {
				s, err := ln.Accept()
				if err != nil {
					sent <- err
					return
				}
				defer s.Close()
				// Uneven pieces, so packets straddle the reader's refills.
				for rest, i := stream, 0; len(rest) > 0; i++ {
					k := min(len(rest), []int{1, 7, 300, 4096, 70000}[i%5])
					if _, err := s.Write(rest[:k]); err != nil {
						sent <- err
						return
					}
					rest = rest[k:]
				}
				sent <- nil
			}()
			var c net.Conn
			c, err = net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			if wrap {
				c = newWireConn(c)
			}
			defer c.Close()
			var got bytes.Buffer
			for got.Len() < len(stream) {
				cp, err := packets.ReadPacket(c)
				if err != nil {
					t.Fatalf("after %d bytes: %v", got.Len(), err)
				}
				if err := cp.Write(&got); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got.Bytes(), stream) {
				t.Fatal("packets read differ from the stream sent")
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			if _, err := packets.ReadPacket(c); !errors.Is(err, io.EOF) {
				t.Errorf("read past the end = %v, want EOF", err)
			}
		})
	}
}

// TestWireCloseConcurrent: writers Write until Writes fail while several
// Closes race them. Exactly one Close does the work, every accepted Write
// reaches the peer in order, and the rest fail with net.ErrClosed.
func TestWireCloseConcurrent(t *testing.T) {
	const writers, closers = 8, 4
	a, b := net.Pipe()
	c := newWireConn(a)
	c.(*wireConn).closeTimeout = time.Minute // a loaded machine must not lose the flush
	received := make(chan []byte, 1)
	go func() { p, _ := io.ReadAll(b); received <- p }()

	var started, wg sync.WaitGroup
	started.Add(writers)
	accepted := make([]int, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1<<24; i++ { // until Close
				if i == 10 {
					started.Done()
				}
				rec := []byte{byte(w), byte(i >> 16), byte(i >> 8), byte(i), 0, 0, 0, 0}
				if _, err := c.Write(rec); err != nil {
					if !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "use of closed network connection") {
						t.Errorf("writer %d: Write = %v", w, err)
					}
					return
				}
				accepted[w]++
			}
			t.Errorf("writer %d: Writes never failed", w)
		}()
	}
	started.Wait()
	var nilCloses atomic.Int32
	for range closers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch err := c.Close(); {
			case err == nil:
				nilCloses.Add(1)
			case !errors.Is(err, net.ErrClosed):
				t.Errorf("Close = %v", err)
			}
		}()
	}
	wg.Wait()
	if n := nilCloses.Load(); n != 1 {
		t.Errorf("%d Closes returned nil, want exactly 1", n)
	}
	requireStopped(t, c)
	if _, err := c.Write(puback(1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close = %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v", err)
	}

	p := <-received
	next := make([]int, writers)
	for ; len(p) >= 8; p = p[8:] {
		w, i := int(p[0]), int(p[1])<<16|int(p[2])<<8|int(p[3])
		if w >= writers || i != next[w] {
			t.Fatalf("record %d of writer %d out of order (expected %d)", i, w, next[w])
		}
		next[w]++
	}
	if len(p) != 0 {
		t.Fatalf("%d stray bytes at the end", len(p))
	}
	for w := range writers {
		if next[w] != accepted[w] {
			t.Errorf("writer %d: %d records accepted, %d reached the peer", w, accepted[w], next[w])
		}
	}
}

// TestWirePahoMosquitto runs paho over wireConn against the real broker:
// QoS 1 both ways, and the DISCONNECT must reach Mosquitto before the
// connection closes (it logs "disconnected", not "closed its connection").
func TestWirePahoMosquitto(t *testing.T) {
	const n = 2000
	broker := mosquittotest.Start(t, mosquittotest.Options{})
	var conns []net.Conn
	var mu sync.Mutex
	dial := func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
		tc, err := tls.Dial("tcp", u.Host, broker.ClientTLS("wire"))
		if err != nil {
			return nil, err
		}
		c := newWireConn(tc)
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		return c, nil
	}
	got := make(chan struct{}, n)
	o := mqtt.NewClientOptions().AddBroker(broker.SSLURL).SetClientID("wire").
		SetCleanSession(true).SetAutoReconnect(false).SetCustomOpenConnectionFn(dial)
	cl := mqtt.NewClient(o)
	wait := func(tok mqtt.Token) {
		t.Helper()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("token: %v", tok.Error())
		}
	}
	wait(cl.Connect())
	wait(cl.Subscribe("wire/t", 1, func(mqtt.Client, mqtt.Message) { got <- struct{}{} }))
	var last mqtt.Token
	for i := range n {
		last = cl.Publish("wire/t", 1, false, fmt.Sprint(i))
	}
	wait(last)
	for i := range n {
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("received %d of %d messages", i, n)
		}
	}
	cl.Disconnect(1000)
	wireWait(t, "Mosquitto to log the end of the connection", func() bool {
		l := broker.Log()
		return strings.Contains(l, "Client wire disconnected") || strings.Contains(l, "Client wire closed its connection")
	})
	if !strings.Contains(broker.Log(), "Client wire disconnected") {
		t.Error("the connection closed without the DISCONNECT reaching the broker")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 1 {
		t.Fatalf("%d connections dialled, want 1", len(conns))
	}
	wireWait(t, "the flusher to stop", func() bool {
		select {
		case <-conns[0].(*wireConn).done:
			return true
		default:
			return false
		}
	})
}

// countConn counts the Writes reaching the connection under it.
type countConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// tlsPair returns both ends of a mutual-TLS loopback connection made with
// internal/pki.
func tlsPair(b *testing.B) (client, server net.Conn) {
	ca, err := pki.NewCA(b.TempDir(), "wire bench CA")
	if err != nil {
		b.Fatal(err)
	}
	srvFiles, err := ca.IssueServer("server")
	if err != nil {
		b.Fatal(err)
	}
	cliFiles, err := ca.IssueClient("bench")
	if err != nil {
		b.Fatal(err)
	}
	srvCfg, err := pki.ServerConfig(srvFiles)
	if err != nil {
		b.Fatal(err)
	}
	cliCfg, err := pki.ClientConfig(cliFiles, "127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		s, err := ln.Accept()
		if err == nil {
			err = s.(*tls.Conn).Handshake()
		}
		if err != nil {
			b.Error(err)
			s = nil
		}
		accepted <- s
	}()
	cc, err := tls.Dial("tcp", ln.Addr().String(), cliCfg) // handshakes
	if err != nil {
		b.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		b.FailNow()
	}
	b.Cleanup(func() { cc.Close(); server.Close() })
	return cc, server
}

// BenchmarkWire compares paho's traffic over a loopback TLS connection, raw
// and through wireConn.
//
// write: one goroutine sends b.N PUBACKs (4 bytes each) and the op ends when
// the peer has them all; writes/op is underlying tls.Conn Writes (each one
// TLS record and at least one syscall) per PUBACK.
//
// read: paho's parser reads b.N PUBLISHes (100-byte payloads) sent one per
// TLS record, as Mosquitto does (one SSL_write per packet), or 100 per record.
func BenchmarkWire(b *testing.B) {
	wraps := []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{
		{"raw", func(c net.Conn) net.Conn { return c }},
		{"wire", newWireConn},
	}
	for _, w := range wraps {
		b.Run("write/"+w.name, func(b *testing.B) {
			cc, srv := tlsPair(b)
			counted := &countConn{Conn: cc}
			c := w.wrap(counted)
			defer c.Close()
			done := make(chan error, 1)
			n := int64(4 * b.N)
			go func() {
				_, err := io.CopyN(io.Discard, srv, n)
				done <- err
			}()
			p := puback(1)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(p); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(counted.writes.Load())/float64(b.N), "writes/op")
		})
	}
	var one bytes.Buffer
	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.Qos, pub.MessageID, pub.TopicName, pub.Payload = 1, 1, "dev/d001/evt", make([]byte, 100)
	if err := pub.Write(&one); err != nil {
		b.Fatal(err)
	}
	for _, perRecord := range []int{1, 100} {
		for _, w := range wraps {
			b.Run(fmt.Sprintf("read/per_record=%d/%s", perRecord, w.name), func(b *testing.B) {
				cc, srv := tlsPair(b)
				record := bytes.Repeat(one.Bytes(), perRecord)
				n := b.N // the goroutine may outlive this run; b.N changes for the next
				go func() {
					for sent := 0; sent < n; sent += perRecord {
						if _, err := srv.Write(record); err != nil {
							return // the benchmark has ended and closed it
						}
					}
				}()
				c := w.wrap(cc)
				defer c.Close()
				b.ResetTimer()
				for range b.N {
					if _, err := packets.ReadPacket(c); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

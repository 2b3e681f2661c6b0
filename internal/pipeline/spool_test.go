package pipeline_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/spool"
)

// outageOpener resolves keys per device: a device marked down gets
// ErrTransient (its key cannot be resolved for now), the others open
// "<device>:<seq>" payloads into records with that id. It refuses exact
// repeats as duplicates, like the decryptor, and notes when two Opens of
// one down device's key ran at once (a key fetched per message).
type outageOpener struct {
	mu       sync.Mutex
	down     map[string]bool
	accepted map[string]bool
	inflight map[string]int
	overlap  int
	fetches  int // Opens of down devices
}

func newOutageOpener() *outageOpener {
	return &outageOpener{down: map[string]bool{}, accepted: map[string]bool{}, inflight: map[string]int{}}
}

func (f *outageOpener) setDown(dev string, down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down[dev] = down
}

func (f *outageOpener) TryOpen(m decrypt.Message) (decrypt.Record, error) {
	f.mu.Lock()
	down := f.down[m.DeviceID]
	f.mu.Unlock()
	if down {
		return decrypt.Record{}, decrypt.ErrWouldBlock
	}
	return f.Open(context.Background(), m)
}

func (f *outageOpener) Open(ctx context.Context, m decrypt.Message) (decrypt.Record, error) {
	f.mu.Lock()
	if f.down[m.DeviceID] {
		f.fetches++
		f.inflight[m.DeviceID]++
		if f.inflight[m.DeviceID] > 1 {
			f.overlap++
		}
		f.mu.Unlock()
		time.Sleep(time.Millisecond) // a fetch that takes a moment
		f.mu.Lock()
		f.inflight[m.DeviceID]--
		f.mu.Unlock()
		return decrypt.Record{}, fmt.Errorf("%w: kms down", decrypt.ErrTransient)
	}
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return decrypt.Record{}, fmt.Errorf("%w: %w", decrypt.ErrTransient, err)
	}
	id := string(m.Payload)
	if f.accepted[id] {
		return decrypt.Record{}, decrypt.ErrDuplicate
	}
	f.accepted[id] = true
	return decrypt.Record{ID: id, DeviceID: m.DeviceID, Timestamp: 1634567890, KeyID: "device/" + m.DeviceID, KeyVersion: "v1",
		Topic: m.Topic, ReceivedAt: m.ReceivedAt, Data: []byte(`{"id":"` + id + `"}`)}, nil
}

func (f *outageOpener) Forget(r decrypt.Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.accepted, r.ID)
}

func devMsg(dev string, i int) intake.Message {
	return intake.Message{Source: "mqtt", Topic: "devices/" + dev + "/telemetry", DeviceID: dev,
		Payload: []byte(fmt.Sprintf("%s:%d", dev, i)), ReceivedAt: time.Now()}
}

func newSpooled(t *testing.T, dir string, op pipeline.Opener, mod func(*spool.Options)) (*pipeline.Pipeline, *spool.Spool, *fakeSink, *fakeSink) {
	t.Helper()
	so := spool.Options{Dir: dir, MinBackoff: 2 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	if mod != nil {
		mod(&so)
	}
	sp, err := spool.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	snk, dl := newSink("file"), newSink("dead")
	p, err := pipeline.New(pipeline.Options{Opener: op, Sinks: []sink.Sink{snk}, DeadLetter: dl,
		Spool: sp, KeyWait: 50 * time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return p, sp, snk, dl
}

// send hands m to p as the consumer's topic worker does: TryProcess, then
// Process when it declines. It returns whether TryProcess took it.
func send(p *pipeline.Pipeline, m intake.Message, done func(error)) bool {
	if p.TryProcess(context.Background(), m, done) {
		return true
	}
	p.Process(context.Background(), m, done)
	return false
}

// waitFor polls cond (no timing assertion: a generous bound only against a
// hang).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// checkOrder: each device's records, in the sink's order, are exactly
// <dev>:0 .. <dev>:n-1.
func checkOrder(t *testing.T, snk *fakeSink, devs []string, n int) {
	t.Helper()
	next := map[string]int{}
	for _, r := range snk.records() {
		dev, _, _ := strings.Cut(r.ID, ":")
		if want := fmt.Sprintf("%s:%d", dev, next[dev]); r.ID != want {
			t.Fatalf("record %s out of order or repeated: want %s", r.ID, want)
		}
		next[dev]++
	}
	for _, d := range devs {
		if next[d] != n {
			t.Fatalf("device %s: %d records, want %d", d, next[d], n)
		}
	}
}

// TestSpoolOutageDelaysOnlyUncachedDevices: half the devices' keys cannot
// be resolved. Every message is done (acknowledged) while the outage
// lasts, the cached devices' records are in the sink, the others' are
// spooled; once the keys resolve, the spooled records arrive in per-device
// order: nothing lost, nothing dead-lettered, nothing twice.
func TestSpoolOutageDelaysOnlyUncachedDevices(t *testing.T) {
	const nDev, per = 20, 50
	op := newOutageOpener()
	var devs, up, down []string
	for i := 0; i < nDev; i++ {
		d := fmt.Sprintf("dev%02d", i)
		devs = append(devs, d)
		if i%2 == 1 {
			op.setDown(d, true)
			down = append(down, d)
		} else {
			up = append(up, d)
		}
	}
	p, sp, snk, dl := newSpooled(t, filepath.Join(t.TempDir(), "spool"), op, nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	done := func(err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		wg.Done()
	}
	var senders sync.WaitGroup
	for _, d := range devs {
		senders.Add(1)
		go func() { // one topic worker per device: calls never overlap
			defer senders.Done()
			for i := 0; i < per; i++ {
				wg.Add(1)
				send(p, devMsg(d, i), done)
			}
		}()
	}
	senders.Wait()
	wg.Wait() // every message acknowledged during the outage
	if len(errs) > 0 {
		t.Fatalf("done errors during the outage: %v", errs)
	}
	waitFor(t, "the cached devices' records", func() bool { return len(snk.records()) == len(up)*per })
	checkOrder(t, snk, up, per)
	if st := sp.Stats(); st.Messages != int64(len(down)*per) || st.Devices != len(down) {
		t.Fatalf("spool during the outage: %+v, want %d messages of %d devices", st, len(down)*per, len(down))
	}
	for _, d := range down {
		if p.TryProcess(context.Background(), devMsg(d, 99), func(error) { t.Error("TryProcess took a message of a spooled device") }) {
			t.Fatalf("TryProcess took a message of spooled device %s", d)
		}
	}

	for _, d := range down {
		op.setDown(d, false)
	}
	waitFor(t, "every record", func() bool { return len(snk.records()) == nDev*per })
	checkOrder(t, snk, devs, per)
	waitFor(t, "an empty spool", func() bool { st := sp.Stats(); return st.Messages == 0 && st.Segments == 0 })
	if n := len(dl.records()); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
	op.mu.Lock()
	overlap := op.overlap
	op.mu.Unlock()
	if overlap != 0 {
		t.Fatalf("%d times two key fetches of one device ran at once", overlap)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestSpoolReopenAfterCrash: messages spooled (and acknowledged) by one
// pipeline that closes without draining are delivered, in order, by the
// next one; a message whose key is cached but whose device has spooled
// messages is spooled behind them, not delivered ahead.
func TestSpoolReopenAfterCrash(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	op := newOutageOpener()
	op.setDown("a", true)
	// No replay retry within the test's first half.
	p, sp, snk, _ := newSpooled(t, dir, op, func(o *spool.Options) { o.MinBackoff, o.MaxBackoff = time.Hour, time.Hour })
	var wg sync.WaitGroup
	done := func(err error) {
		if err != nil {
			t.Errorf("done: %v", err)
		}
		wg.Done()
	}
	wg.Add(4)
	send(p, devMsg("a", 0), done)
	send(p, devMsg("a", 1), done)
	op.setDown("a", false) // the key is back, but a:0 and a:1 are spooled
	if send(p, devMsg("a", 2), done) {
		t.Fatal("TryProcess took a:2 ahead of a's spooled messages")
	}
	send(p, devMsg("b", 0), done)
	wg.Wait()
	if st := sp.Stats(); st.Messages != 3 {
		t.Fatalf("spool: %+v, want a's 3 messages", st)
	}
	if got := snk.records(); len(got) != 1 || got[0].ID != "b:0" {
		t.Fatalf("sink before the crash: %v", got)
	}
	if err := p.Close(context.Background()); err != nil { // stops without draining the spool
		t.Fatal(err)
	}

	p2, sp2, snk2, dl2 := newSpooled(t, dir, op, nil)
	waitFor(t, "a's records", func() bool { return len(snk2.records()) == 3 })
	checkOrder(t, snk2, []string{"a"}, 3)
	waitFor(t, "an empty spool", func() bool { return sp2.Stats().Messages == 0 })
	if n := len(dl2.records()); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
	if err := p2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestSpoolFullHoldsMessages: with the spool full, a key-pending message
// waits in Process as without a spool, and a later message of a spooled
// device waits behind; both are delivered in order once keys resolve.
func TestSpoolFullHoldsMessages(t *testing.T) {
	op := newOutageOpener()
	op.setDown("a", true)
	op.setDown("b", true)
	m0 := devMsg("a", 0)
	p, sp, snk, dl := newSpooled(t, filepath.Join(t.TempDir(), "spool"), op, func(o *spool.Options) {
		o.MaxBytes = 8 + int64(len(m0.Payload)+len(m0.Topic)+len(m0.DeviceID)+len(m0.Source)) + 64 // the header and one record
	})
	var wg sync.WaitGroup
	done := func(err error) {
		if err != nil {
			t.Errorf("done: %v", err)
		}
		wg.Done()
	}
	wg.Add(1)
	send(p, m0, done)
	wg.Wait()
	if st := sp.Stats(); st.Messages != 1 {
		t.Fatalf("spool: %+v", st)
	}
	wg.Add(2)
	held := make(chan struct{})
	go func() {
		send(p, devMsg("a", 1), done) // behind a:0, spool full: held
		send(p, devMsg("b", 0), done) // key-pending, spool full: held
		close(held)
	}()
	op.setDown("a", false)
	op.setDown("b", false)
	<-held
	wg.Wait()
	waitFor(t, "3 records", func() bool { return len(snk.records()) == 3 })
	checkOrder(t, snk, []string{"a"}, 2)
	if n := len(dl.records()); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

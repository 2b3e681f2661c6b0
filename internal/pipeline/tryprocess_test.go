package pipeline_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/testutil/metrictest"
	"github.com/decryptd/decryptd/internal/testutil/wait"
)

// tryOpener is fakeOpener whose TryOpen answers tryErr when set, for the
// answers fakeOpener's own TryOpen never gives (ErrTransient,
// ErrDuplicate), and is fakeOpener's TryOpen otherwise.
type tryOpener struct {
	*fakeOpener
	tryErr error
}

func (o tryOpener) TryOpen(m decrypt.Message) (decrypt.Record, error) {
	if o.tryErr != nil {
		return decrypt.Record{}, o.tryErr
	}
	return o.fakeOpener.TryOpen(m)
}

// doneCounter counts the done calls of each message and signals each one.
type doneCounter struct {
	mu    sync.Mutex
	calls map[string][]error
	ch    chan string
}

func newDoneCounter() *doneCounter {
	return &doneCounter{calls: map[string][]error{}, ch: make(chan string, 1024)}
}

func (c *doneCounter) done(id string) func(error) {
	return func(err error) {
		c.mu.Lock()
		c.calls[id] = append(c.calls[id], err)
		c.mu.Unlock()
		c.ch <- id
	}
}

func (c *doneCounter) of(id string) []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls[id])
}

func (c *doneCounter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, errs := range c.calls {
		n += len(errs)
	}
	return n
}

// wait waits for n done calls.
func (c *doneCounter) wait(t *testing.T, n int) {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for range n {
		select {
		case <-c.ch:
		case <-timeout.C:
			t.Fatalf("timed out waiting for done calls: %d so far, want %d", c.total(), n)
		}
	}
}

func (e *env) opens(payload string) int {
	e.op.mu.Lock()
	defer e.op.mu.Unlock()
	return e.op.opens[payload]
}

func dupOf(m intake.Message) intake.Message {
	m.Redelivered = true
	return m
}

func TestTryProcess(t *testing.T) {
	cases := []struct {
		name    string
		accept  []string // payloads processed (and accepted) before
		m       intake.Message
		tryErr  error // forces TryOpen's answer
		taken   bool
		records []string // in each sink afterwards
		dead    string   // the dead letter's reason, if one
	}{
		{name: "ok", m: msg("ok:r1"), taken: true, records: []string{"r1"}},
		{name: "ok, multiline", m: msg("multiline:r1"), taken: true, records: []string{"r1"}},
		{name: "fail auth_failed", m: msg("fail:auth_failed"), taken: true, dead: "auth_failed"},
		{name: "copy of an accepted message on another topic", accept: []string{"ok:r1"}, m: moved(msg("ok:r1")), taken: true, records: []string{"r1"}, dead: "replay"},
		// An exact repeat without DUP (a device's resend) may have to wait
		// for its first copy: declined as a DUP copy is.
		{name: "exact repeat of an accepted message", accept: []string{"ok:r1"}, m: msg("ok:r1"), taken: false, records: []string{"r1"}},
		{name: "transient", m: msg("transient:1:r1"), taken: false},
		// fakeOpener's TryOpen declines every DUP copy (ErrWouldBlock); the
		// real decryptor's answer, ErrDuplicate, is the tryErr case below.
		{name: "DUP copy of an accepted message", accept: []string{"ok:r1"}, m: dupOf(msg("ok:r1")), taken: false, records: []string{"r1"}},
		{name: "TryOpen says transient", m: msg("ok:r1"), tryErr: fmt.Errorf("%w: kms down", decrypt.ErrTransient), taken: false},
		{name: "TryOpen says duplicate", accept: []string{"ok:r1"}, m: dupOf(msg("ok:r1")),
			tryErr: fmt.Errorf("%w: nonce already accepted", decrypt.ErrDuplicate), taken: false, records: []string{"r1"}},
		{name: "TryOpen says would block, wrapped", m: msg("ok:r1"), tryErr: fmt.Errorf("opener: %w", decrypt.ErrWouldBlock), taken: false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, func(o *pipeline.Options) {
				if c.tryErr != nil {
					o.Opener = tryOpener{fakeOpener: o.Opener.(*fakeOpener), tryErr: c.tryErr}
				}
			})
			// A probe accepted first: its DUP copy, handled after the
			// TryProcess call, waits for every delivery begun before it,
			// so it hangs if a declined TryProcess left one begun.
			probe := msg("ok:probe")
			process(t, e, probe)
			for _, p := range c.accept {
				process(t, e, msg(p))
			}
			payload := string(c.m.Payload)
			opensBefore := e.opens(payload)
			durBefore := metrictest.Value(t, e.reg, "decryptd_decrypt_duration_seconds")
			processedBefore := processedTotal(t, e)

			dc := newDoneCounter()
			taken := e.p.TryProcess(context.Background(), c.m, dc.done("m"))
			if taken != c.taken {
				t.Fatalf("TryProcess = %v, want %v", taken, c.taken)
			}
			if taken {
				dc.wait(t, 1)
			} else {
				if got := e.opens(payload); got != opensBefore {
					t.Errorf("opens of %s: %d, was %d: a declined TryProcess opened it", payload, got, opensBefore)
				}
				if got := metrictest.Value(t, e.reg, "decryptd_decrypt_duration_seconds"); got != durBefore {
					t.Errorf("decrypt duration observations: %v, was %v", got, durBefore)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := handle(e.p, ctx, dupOf(probe)); err != nil {
				t.Fatalf("DUP copy of the probe: %v (a delivery left begun?)", err)
			}
			e.close() // every batcher drained: the sinks and done counts are final

			if taken {
				if errs := dc.of("m"); len(errs) != 1 || errs[0] != nil {
					t.Fatalf("done calls %v, want exactly one, nil", errs)
				}
			} else if n := dc.total(); n != 0 {
				t.Fatalf("done called %d times for a declined message", n)
			}
			want := append([]string{"probe"}, c.records...)
			for _, s := range []*fakeSink{e.a, e.b} {
				if got := ids(s.records()); !slices.Equal(got, want) {
					t.Errorf("sink %s holds %v, want %v", s.name, got, want)
				}
			}
			dls := e.dl.records()
			switch {
			case c.dead == "" && len(dls) != 0:
				t.Errorf("dead letters: %d, want none", len(dls))
			case c.dead != "":
				if len(dls) != 1 {
					t.Fatalf("dead letters: %d, want 1", len(dls))
				}
				if d := deadLetter(t, dls[0].JSON); d.Reason != c.dead || string(d.Payload) != payload || d.Redelivered != c.m.Redelivered {
					t.Errorf("dead letter reason %s, payload %q, dup %v; want %s, %q, %v", d.Reason, d.Payload, d.Redelivered, c.dead, payload, c.m.Redelivered)
				}
			}
			wantProcessed := processedBefore + 1 // the probe's DUP copy
			if taken {
				wantProcessed++
			}
			if got := processedTotal(t, e); got != wantProcessed {
				t.Errorf("messages processed: %v, want %v", got, wantProcessed)
			}
		})
	}
}

// deadLetter decodes one dead-letter sink record.
func deadLetter(t *testing.T, line []byte) sink.DeadLetter {
	t.Helper()
	var got []sink.DeadLetter
	for d, err := range sink.ReadDeadLetters(bytes.NewReader(append(slices.Clone(line), '\n'))) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, d)
	}
	if len(got) != 1 {
		t.Fatalf("dead-letter record holds %d dead letters", len(got))
	}
	return got[0]
}

func processedTotal(t *testing.T, e *env) float64 {
	t.Helper()
	var n float64
	for _, o := range []string{pipeline.OutcomeDelivered, pipeline.OutcomeDeadLettered, pipeline.OutcomeDuplicate} {
		n += metrictest.Value(t, e.reg, "decryptd_messages_processed_total", "outcome", o)
	}
	return n
}

// A mix of TryProcess and Process calls for one topic, from one goroutine
// as the consumer's intake makes them (a declined TryProcess followed by
// Process of the same message), while sink a stalls on its first write:
// each sink holds the records in call order, the dead-letter sink the
// failures in call order, and done ran once per message.
func TestTryProcessMixedOrder(t *testing.T) {
	e := newEnv(t, nil)
	gate := make(chan struct{})
	e.a.setGate(gate)
	e.a.entered = make(chan struct{}, 1)

	const n = 60
	dc := newDoneCounter()
	var want, wantDead []string
	tried, declined := 0, 0
	for i := range n {
		id := fmt.Sprintf("r%02d", i)
		var payload string
		switch i % 5 {
		case 0, 1:
			payload = "ok:" + id
		case 2:
			payload = "transient:1:" + id // TryProcess declines; Process retries once
		case 3:
			payload = "multiline:" + id
		case 4:
			reasons := decrypt.Reasons()
			payload = "fail:" + reasons[(i/5)%len(reasons)]
		}
		if i%5 == 4 {
			wantDead = append(wantDead, payload)
		} else {
			want = append(want, id)
		}
		m := intake.Message{Topic: "t/order", Payload: []byte(payload), ReceivedAt: received}
		done := dc.done(id)
		// Every other message goes straight to Process; the rest try
		// first, as the intake does.
		if i%2 == 0 {
			tried++
			if e.p.TryProcess(context.Background(), m, done) {
				if i == 0 {
					<-e.a.entered // the rest is handed over while a stalls
				}
				continue
			}
			declined++
		}
		e.p.Process(context.Background(), m, done)
		if i == 0 {
			<-e.a.entered
		}
	}
	if declined == 0 || declined == tried {
		t.Fatalf("TryProcess declined %d of %d calls: the test needs both kinds", declined, tried)
	}
	wait.For(t, "sink b to hold every record while a stalls", func() bool { return len(e.b.records()) == len(want) })
	close(gate)
	dc.wait(t, n)
	e.close()

	for i := range n {
		id := fmt.Sprintf("r%02d", i)
		if errs := dc.of(id); len(errs) != 1 || errs[0] != nil {
			t.Errorf("%s: done calls %v, want exactly one, nil", id, errs)
		}
	}
	for _, s := range []*fakeSink{e.a, e.b} {
		if got := ids(s.records()); !slices.Equal(got, want) {
			t.Errorf("sink %s holds %v,\nwant %v", s.name, got, want)
		}
		if s.overlaps.Load() != 0 {
			t.Errorf("sink %s: Write called concurrently", s.name)
		}
	}
	var gotDead []string
	for _, r := range e.dl.records() {
		gotDead = append(gotDead, string(deadLetter(t, r.JSON).Payload))
	}
	if !slices.Equal(gotDead, wantDead) {
		t.Errorf("dead letters %v,\nwant %v", gotDead, wantDead)
	}
	if len(e.a.batchSizes()) >= len(want) {
		t.Errorf("sink a: %d writes for %d records while stalled: nothing was batched", len(e.a.batchSizes()), len(want))
	}
}

// Concurrent TryProcess calls on distinct messages: each is taken, and
// done runs exactly once for each, with both sinks answering.
func TestTryProcessConcurrentDoneOnce(t *testing.T) {
	e := newEnv(t, nil)
	const goroutines, per = 8, 25
	dc := newDoneCounter()
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range per {
				id := fmt.Sprintf("g%d-%d", g, i)
				if !e.p.TryProcess(context.Background(), msg("ok:"+id), dc.done(id)) {
					t.Errorf("TryProcess(%s) declined", id)
				}
			}
		})
	}
	wg.Wait()
	dc.wait(t, goroutines*per)
	e.close()
	if n := dc.total(); n != goroutines*per {
		t.Fatalf("done calls: %d, want %d", n, goroutines*per)
	}
	for g := range goroutines {
		for i := range per {
			id := fmt.Sprintf("g%d-%d", g, i)
			if errs := dc.of(id); len(errs) != 1 || errs[0] != nil {
				t.Errorf("%s: done calls %v, want exactly one, nil", id, errs)
			}
		}
	}
	for _, s := range []*fakeSink{e.a, e.b} {
		if got := len(s.records()); got != goroutines*per {
			t.Errorf("sink %s holds %d records, want %d", s.name, got, goroutines*per)
		}
	}
}

package pipeline_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
)

// heldSink holds its first Write until gate is closed, so that the records
// handed over meanwhile make large batches (answered by the settlers), and
// remembers every id it wrote before Write returns.
type heldSink struct {
	name  string
	gate  chan struct{}
	first sync.Once
	held  sync.Map // id: true
}

func (s *heldSink) Name() string { return s.name }
func (s *heldSink) Write(ctx context.Context, batch []sink.Record) error {
	s.first.Do(func() { <-s.gate })
	for _, r := range batch {
		s.held.Store(r.ID, true)
	}
	return nil
}
func (s *heldSink) Flush(context.Context) error { return nil }
func (s *heldSink) Close(context.Context) error { return nil }

// TestSettlersAnswerAfterEverySink: with batches large enough to be
// settled by the settler goroutines, each message's done is called exactly
// once, with nil, only once every sink holds its record, and every done
// has been called when Close returns.
func TestSettlersAnswerAfterEverySink(t *testing.T) {
	const n = 3000
	gate := make(chan struct{})
	a, b := &heldSink{name: "a", gate: gate}, &heldSink{name: "b", gate: gate}
	p, err := pipeline.New(pipeline.Options{
		Opener:     newOpener(),
		Sinks:      []sink.Sink{a, b},
		DeadLetter: slowSink{"dead_letter", 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	var calls [n]atomic.Int32
	var dones atomic.Int32
	for i := range n {
		id := "r" + strconv.Itoa(i)
		m := intake.Message{Topic: "t", Payload: []byte("ok:" + id)}
		p.Process(context.Background(), m, func(err error) {
			if err != nil {
				t.Errorf("%s: done(%v)", id, err)
			}
			if c := calls[i].Add(1); c != 1 {
				t.Errorf("%s: done called %d times", id, c)
			}
			for _, s := range []*heldSink{a, b} {
				if _, ok := s.held.Load(id); !ok {
					t.Errorf("%s: done before sink %s held the record", id, s.name)
				}
			}
			dones.Add(1)
		})
		if i == n/2 {
			close(gate)
		}
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := dones.Load(); got != n {
		t.Fatalf("%d dones by the time Close returned, want %d", got, n)
	}
}

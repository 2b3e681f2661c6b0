package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
)

// fakeOpener decides by payload:
//
//	ok:<id>            a record with that id (data {"id":"<id>"})
//	fail:<reason>      the named spec reason
//	transient:<n>:<id> ErrTransient for the first n opens, then ok:<id>
//	multiline:<id>     a record whose data spans lines
//
// Like the real decryptor it remembers accepted ids with their topic: an
// exact repeat (same payload, same topic; DUP or not) is ErrDuplicate, the
// payload on another topic a replay; Forget removes it.
type fakeOpener struct {
	mu        sync.Mutex
	accepted  map[string]string // id: topic
	opens     map[string]int
	forgotten []string
}

func newOpener() *fakeOpener {
	return &fakeOpener{accepted: map[string]string{}, opens: map[string]int{}}
}

func reasonErr(reason string) error {
	for _, e := range []error{decrypt.ErrMalformed, decrypt.ErrTopicMismatch, decrypt.ErrStale, decrypt.ErrUnknownKey,
		decrypt.ErrKeyRevoked, decrypt.ErrAuthFailed, decrypt.ErrBadPlaintext, decrypt.ErrReplay} {
		if e.Error() == reason {
			return fmt.Errorf("%w: detail of %s", e, reason)
		}
	}
	panic("unknown reason " + reason)
}

// TryOpen declines what could wait (transient payloads, DUP copies, as a
// key not cached would), and opens the rest as Open does.
func (f *fakeOpener) TryOpen(m decrypt.Message) (decrypt.Record, error) {
	if strings.HasPrefix(string(m.Payload), "transient:") || m.Redelivered {
		return decrypt.Record{}, decrypt.ErrWouldBlock
	}
	f.mu.Lock()
	_, id, _ := strings.Cut(string(m.Payload), ":")
	topic, ok := f.accepted[id]
	f.mu.Unlock()
	if ok && topic == m.Topic {
		// An exact repeat: the real TryOpen's ErrDuplicate, which
		// TryProcess declines (it may have to wait for the first copy).
		return decrypt.Record{}, decrypt.ErrDuplicate
	}
	return f.Open(context.Background(), m)
}

func (f *fakeOpener) Open(ctx context.Context, m decrypt.Message) (decrypt.Record, error) {
	if err := ctx.Err(); err != nil {
		return decrypt.Record{}, fmt.Errorf("%w: %w", decrypt.ErrTransient, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p := string(m.Payload)
	f.opens[p]++
	kind, rest, _ := strings.Cut(p, ":")
	data := ""
	switch kind {
	case "fail":
		return decrypt.Record{}, reasonErr(rest)
	case "transient":
		n, id, _ := strings.Cut(rest, ":")
		want, _ := strconv.Atoi(n)
		if f.opens[p] <= want {
			return decrypt.Record{}, fmt.Errorf("%w: kms down", decrypt.ErrTransient)
		}
		rest = id
	case "multiline":
		data = "{\n  \"id\": \"" + rest + "\",\r\n  \"n\": 98.60\n}"
	case "ok":
	default:
		return decrypt.Record{}, fmt.Errorf("%w: not a fake payload", decrypt.ErrMalformed)
	}
	if topic, ok := f.accepted[rest]; ok {
		if topic == m.Topic {
			return decrypt.Record{}, decrypt.ErrDuplicate
		}
		return decrypt.Record{}, fmt.Errorf("%w: nonce already accepted", decrypt.ErrReplay)
	}
	f.accepted[rest] = m.Topic
	if data == "" {
		data = `{"id":"` + rest + `"}`
	}
	return decrypt.Record{
		ID: rest, DeviceID: "dev-" + rest, Timestamp: 1634567890, KeyID: "device/dev-" + rest, KeyVersion: "v1",
		Topic: m.Topic, ReceivedAt: m.ReceivedAt, Data: []byte(data),
	}, nil
}

// Forget is told which record by its id (the fake's only handle on it).
func (f *fakeOpener) Forget(r decrypt.Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.accepted, r.ID)
	f.forgotten = append(f.forgotten, r.ID)
}

func (f *fakeOpener) forgot() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.forgotten...)
}

// fakeSink records every batch it holds. Faults: failures fails the next n
// writes; gate, when set, makes Write wait for it (or fail with ctx);
// reject refuses records whose id it holds with ErrBadRecord, the whole
// batch at once as real sinks do.
type fakeSink struct {
	name string

	mu       sync.Mutex
	batches  [][]sink.Record
	failures int
	calls    int
	gate     chan struct{}
	reject   map[string]bool
	flushed  bool
	closed   bool
	inWrite  atomic.Int32
	overlaps atomic.Int32
	entered  chan struct{} // receives one value per Write call, if set
}

func newSink(name string) *fakeSink { return &fakeSink{name: name, reject: map[string]bool{}} }

func (s *fakeSink) Name() string { return s.name }

func (s *fakeSink) Write(ctx context.Context, batch []sink.Record) error {
	if s.inWrite.Add(1) > 1 {
		s.overlaps.Add(1)
	}
	defer s.inWrite.Add(-1)
	s.mu.Lock()
	s.calls++
	gate, entered := s.gate, s.entered
	s.mu.Unlock()
	if entered != nil {
		select {
		case entered <- struct{}{}:
		default:
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return sink.ErrClosed
	}
	if s.failures > 0 {
		s.failures--
		return errors.New("fake sink down")
	}
	for _, r := range batch {
		if s.reject[r.ID] {
			return fmt.Errorf("record %s: %w", r.ID, sink.ErrBadRecord)
		}
	}
	cp := make([]sink.Record, len(batch))
	for i, r := range batch {
		cp[i] = sink.Record{ID: r.ID, DeviceID: r.DeviceID, JSON: append([]byte(nil), r.JSON...)}
	}
	s.batches = append(s.batches, cp)
	return nil
}

func (s *fakeSink) Flush(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flushed = true
	return nil
}

func (s *fakeSink) Close(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (s *fakeSink) setGate(g chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = g
}

func (s *fakeSink) setFailures(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = n
}

func (s *fakeSink) records() []sink.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []sink.Record
	for _, b := range s.batches {
		out = append(out, b...)
	}
	return out
}

func (s *fakeSink) batchSizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for _, b := range s.batches {
		out = append(out, len(b))
	}
	return out
}

// process runs m through p and waits, as the consumer's worker would.
func handle(p *pipeline.Pipeline, ctx context.Context, m intake.Message) error {
	_, err := p.Handle(ctx, m)
	return err
}

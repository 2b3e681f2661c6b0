package pipeline_test

import (
	"context"
	"crypto/cipher"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/intake"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/spool"
)

// hungKMS is a key resolver whose "down" devices hang until the caller
// gives up (a KMS that accepts connections and never answers), as the key
// cache's lookups do.
type hungKMS struct {
	mu   sync.Mutex
	keys map[string]cipher.AEAD
	down map[string]bool
}

func (k *hungKMS) isDown(dev string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.down[dev]
}

func (k *hungKMS) ResolveKey(ctx context.Context, keyID, ver, dev string) (cipher.AEAD, error) {
	if k.isDown(dev) {
		<-ctx.Done()
		return nil, fmt.Errorf("%w: %w", dek.ErrUnavailable, ctx.Err())
	}
	return k.keys[dev], nil
}

func (k *hungKMS) ResolveCachedKey(keyID, ver, dev string) (cipher.AEAD, error) {
	if k.isDown(dev) {
		return nil, dek.ErrWouldWait
	}
	return k.keys[dev], nil
}

func (k *hungKMS) PrefetchKey(string, string, string) {}

// TestSpoolWithDecryptorHungKMS: the real decryptor behind a KMS that
// hangs for half the devices. Each message of those waits at most
// KeyWait, is spooled and acknowledged; after a crash (the pipeline
// closed without draining, a fresh decryptor: an empty replay window) and
// the broker's redelivery of a spooled message, every message reaches
// the sink once, in per-device order, none dead-lettered.
func TestSpoolWithDecryptorHungKMS(t *testing.T) {
	devs := []string{"d0", "d1", "d2", "d3"}
	kms := &hungKMS{keys: map[string]cipher.AEAD{}, down: map[string]bool{"d1": true, "d3": true}}
	for i, d := range devs {
		key := make([]byte, 32)
		key[0] = byte(i + 1)
		a, err := seal.NewAEAD(key)
		if err != nil {
			t.Fatal(err)
		}
		kms.keys[d] = a
	}
	const per = 5
	sealer := seal.New(nil)
	msgs := map[string][]intake.Message{}
	for _, d := range devs {
		for i := 0; i < per; i++ {
			p, err := sealer.AppendShapeA(nil, kms.keys[d], seal.Envelope{DeviceID: d, Timestamp: 1700000000 + int64(i), KeyVersion: "v1"},
				[]byte(fmt.Sprintf(`{"seq":%d}`, i)), nil)
			if err != nil {
				t.Fatal(err)
			}
			msgs[d] = append(msgs[d], intake.Message{Source: "mqtt", Topic: "iot-2/type/t/id/" + d + "/evt/e/fmt/json", DeviceID: d, Payload: p, ReceivedAt: time.Now()})
		}
	}
	dir := filepath.Join(t.TempDir(), "spool")
	start := func(hold bool) (*pipeline.Pipeline, *spool.Spool, *fakeSink, *fakeSink) {
		dec, err := decrypt.New(kms, decrypt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		so := spool.Options{Dir: dir, MinBackoff: 2 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
		if hold {
			so.MinBackoff, so.MaxBackoff = time.Hour, time.Hour
		}
		sp, err := spool.Open(so)
		if err != nil {
			t.Fatal(err)
		}
		snk, dl := newSink("file"), newSink("dead")
		p, err := pipeline.New(pipeline.Options{Opener: dec, Sinks: []sink.Sink{snk}, DeadLetter: dl,
			Spool: sp, KeyWait: 20 * time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return p, sp, snk, dl
	}

	p, sp, snk, _ := start(true)
	var wg sync.WaitGroup
	done := func(err error) {
		if err != nil {
			t.Errorf("done: %v", err)
		}
		wg.Done()
	}
	var senders sync.WaitGroup
	for _, d := range devs {
		senders.Add(1)
		go func() {
			defer senders.Done()
			for _, m := range msgs[d] {
				wg.Add(1)
				send(p, m, done)
			}
		}()
	}
	senders.Wait()
	wg.Wait()
	if n := len(snk.records()); n != 2*per {
		t.Fatalf("%d records of cached devices during the outage, want %d", n, 2*per)
	}
	if st := sp.Stats(); st.Messages != 2*per {
		t.Fatalf("spool %+v, want %d messages", st, 2*per)
	}
	if err := p.Close(context.Background()); err != nil { // the crash
		t.Fatal(err)
	}

	kms.mu.Lock()
	kms.down = map[string]bool{}
	kms.mu.Unlock()
	p, sp, snk, dl := start(false)
	// The broker redelivers d1's first message (its acknowledgement was
	// lost in the crash).
	red := msgs["d1"][0]
	red.Redelivered = true
	wg.Add(1)
	send(p, red, done)
	wg.Wait()
	waitFor(t, "the spooled devices' records", func() bool { return len(snk.records()) == 2*per })
	waitFor(t, "an empty spool", func() bool { return sp.Stats().Messages == 0 })
	seen := map[string]int{}
	for _, r := range snk.records() {
		var rec struct {
			DeviceID string          `json:"device_id"`
			Data     json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(r.JSON, &rec); err != nil {
			t.Fatalf("record %s: %v", r.JSON, err)
		}
		want := fmt.Sprintf(`{"seq":%d}`, seen[r.DeviceID])
		if string(rec.Data) != want {
			t.Fatalf("device %s: record data %s, want %s (order or duplicate)", r.DeviceID, rec.Data, want)
		}
		seen[r.DeviceID]++
	}
	if seen["d1"] != per || seen["d3"] != per {
		t.Fatalf("records by device: %v", seen)
	}
	if n := len(dl.records()); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

package decrypt

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/seal"
	"github.com/decryptd/decryptd/internal/testutil/vectors"
)

// cachedKeys is fakeKeys as a CachedKeyResolver that behaves like the key
// cache: ResolveCachedKey answers only for versions a ResolveKey has loaded
// (or every version, with all), and ErrWouldWait for the others. waits and
// tries count the two kinds of lookup.
type cachedKeys struct {
	keys *fakeKeys
	all  bool

	mu     sync.Mutex
	loaded map[keyRef]bool

	waits      atomic.Int64 // ResolveKey calls
	tries      atomic.Int64 // ResolveCachedKey calls
	prefetches atomic.Int64 // PrefetchKey calls (the fake loads nothing ahead)
}

func newCachedKeys(keys *fakeKeys, all bool) *cachedKeys {
	return &cachedKeys{keys: keys, all: all, loaded: map[keyRef]bool{}}
}

func (c *cachedKeys) ResolveKey(ctx context.Context, keyID, keyVersion, deviceID string) (cipher.AEAD, error) {
	c.waits.Add(1)
	c.mu.Lock()
	c.loaded[keyRef{keyID, keyVersion}] = true
	c.mu.Unlock()
	return c.keys.ResolveKey(ctx, keyID, keyVersion, deviceID)
}

func (c *cachedKeys) ResolveCachedKey(keyID, keyVersion, deviceID string) (cipher.AEAD, error) {
	c.tries.Add(1)
	c.mu.Lock()
	ok := c.all || c.loaded[keyRef{keyID, keyVersion}]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("fake cache: %s@%s: %w", keyID, keyVersion, dek.ErrWouldWait)
	}
	return c.keys.ResolveKey(context.Background(), keyID, keyVersion, deviceID)
}

func (c *cachedKeys) PrefetchKey(string, string, string) { c.prefetches.Add(1) }

var _ CachedKeyResolver = (*cachedKeys)(nil)

// cachedKit is a kit whose Decryptor resolves through cachedKeys over the
// kit's keys (the kit's own Decryptor stays a plain-KeyResolver one).
func cachedKit(t *testing.T, all bool) (*kit, *cachedKeys, *Decryptor) {
	t.Helper()
	k := newKit(t, Options{})
	ck := newCachedKeys(k.keys, all)
	d, err := New(ck, Options{Now: k.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return k, ck, d
}

func tryOpen(d *Decryptor, payload []byte, dup bool) (Record, error) {
	return d.TryOpen(Message{Topic: testTopic, Payload: payload, Redelivered: dup})
}

// A resolver that cannot answer without waiting: TryOpen declines every
// message, records nothing and asks the resolver nothing; Open decides.
func TestTryOpenPlainResolverWouldBlock(t *testing.T) {
	k := newKit(t, Options{})
	if _, ok := KeyResolver(k.keys).(CachedKeyResolver); ok {
		t.Fatal("fakeKeys is a CachedKeyResolver: the test needs a plain KeyResolver")
	}
	msgs := map[string][]byte{
		"shape A": k.shapeA(t, k.env, `{"a":1}`),
		"shape B": k.shapeB(t, k.env, seal.Field{Name: "a", Value: []byte(`1`), Seal: true}),
	}
	for name, msg := range msgs {
		t.Run(name, func(t *testing.T) {
			before := k.keys.calls.Load()
			for _, dup := range []bool{false, true} {
				rec, err := tryOpen(k.d, msg, dup)
				if !errors.Is(err, ErrWouldBlock) || Reason(err) != "" {
					t.Fatalf("TryOpen(dup=%v): err %v (reason %q), want ErrWouldBlock", dup, err, Reason(err))
				}
				if !reflect.DeepEqual(rec, Record{}) {
					t.Fatal("TryOpen returned a record with ErrWouldBlock")
				}
			}
			if k.keys.calls.Load() != before {
				t.Error("TryOpen called ResolveKey")
			}
			n := k.d.win.len()
			if _, err := k.open(msg, false); err != nil {
				t.Fatalf("Open after TryOpen declined: %v", err)
			}
			if got := k.d.win.len(); got <= n {
				t.Errorf("replay window holds %d entries after Open, had %d", got, n)
			}
		})
	}
}

// Key not cached: ErrWouldBlock with nothing recorded, so Open of the same
// message decrypts it (no replay); afterwards, with the key cached,
// TryOpen gives what Open gives: replay for a copy, duplicate for a DUP
// copy.
func TestTryOpenWouldWaitLeavesNoTrace(t *testing.T) {
	k, ck, d := cachedKit(t, false)
	msgs := map[string][]byte{
		"shape A": k.shapeA(t, k.env, `{"a":1}`),
		"shape B": k.shapeB(t, k.env,
			seal.Field{Name: "a", Value: []byte(`1`), Seal: true},
			seal.Field{Name: "b", Value: []byte(`"two"`), Seal: true},
			seal.Field{Name: "c", Value: []byte(`3`)}),
	}
	for _, name := range []string{"shape A", "shape B"} {
		msg := msgs[name]
		t.Run(name, func(t *testing.T) {
			// Each subtest's message is under the same key; start uncached.
			ck.mu.Lock()
			clear(ck.loaded)
			ck.mu.Unlock()
			waits, prefetches := ck.waits.Load(), ck.prefetches.Load()
			entries := d.win.len()

			for _, dup := range []bool{false, true, false} {
				rec, err := tryOpen(d, msg, dup)
				if !errors.Is(err, ErrWouldBlock) || Reason(err) != "" || errors.Is(err, ErrTransient) {
					t.Fatalf("TryOpen(dup=%v), key not cached: err %v (reason %q), want ErrWouldBlock only", dup, err, Reason(err))
				}
				if !reflect.DeepEqual(rec, Record{}) {
					t.Fatal("TryOpen returned a record with ErrWouldBlock")
				}
			}
			if got := d.win.len(); got != entries {
				t.Fatalf("replay window holds %d entries after declined TryOpens, had %d", got, entries)
			}
			if ck.waits.Load() != waits {
				t.Fatal("TryOpen called ResolveKey")
			}
			if got := ck.prefetches.Load() - prefetches; got != 3 {
				t.Fatalf("%d prefetches for 3 declined TryOpens, want 3 (each asks for the key to be loaded)", got)
			}

			// Open loads the key and accepts the message: not a replay.
			want, err := d.Open(context.Background(), Message{Topic: testTopic, Payload: msg})
			if err != nil {
				t.Fatalf("Open after a declined TryOpen: %v", err)
			}
			if d.win.len() == entries {
				t.Fatal("Open accepted the message but the replay window did not grow")
			}

			// The key is cached now: TryOpen answers as Open does.
			waits = ck.waits.Load()
			for _, c := range []struct {
				dup  bool
				want error
			}{{false, ErrDuplicate}, {true, ErrDuplicate}} {
				rec, err := tryOpen(d, msg, c.dup)
				if !errors.Is(err, c.want) {
					t.Fatalf("TryOpen(dup=%v) of an accepted message: %v, want %v", c.dup, err, c.want)
				}
				if !reflect.DeepEqual(rec, Record{}) {
					t.Fatal("a record came out with the failure")
				}
				_, oerr := d.Open(context.Background(), Message{Topic: testTopic, Payload: msg, Redelivered: c.dup})
				if oerr == nil || err.Error() != oerr.Error() {
					t.Errorf("TryOpen(dup=%v): %q, Open: %v", c.dup, err, oerr)
				}
			}
			if got := ck.waits.Load() - waits; got != 2 {
				t.Errorf("ResolveKey calls = %d, want 2 (the two Opens only)", got)
			}

			// Forgotten, the message is accepted again, this time by
			// TryOpen, with the record Open gave, and recorded: Open of the
			// same message is a duplicate then.
			d.Forget(want)
			waits = ck.waits.Load()
			got, err := tryOpen(d, msg, true)
			if err != nil {
				t.Fatalf("TryOpen after Forget: %v", err)
			}
			if ck.waits.Load() != waits {
				t.Error("TryOpen called ResolveKey")
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("TryOpen record %s, Open record %s", got.AppendJSON(nil), want.AppendJSON(nil))
			}
			if _, err := d.Open(context.Background(), Message{Topic: testTopic, Payload: msg}); !errors.Is(err, ErrDuplicate) {
				t.Errorf("Open after TryOpen accepted: %v, want ErrDuplicate", err)
			}
		})
	}
}

// The resolver's other answers through ResolveCachedKey become what Open
// makes of them.
func TestTryOpenResolverErrors(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"unavailable", fmt.Errorf("kms: dial tcp: %w", dek.ErrUnavailable), ErrTransient},
		{"unclassified", errors.New("resolver bug"), ErrTransient},
		{"unknown key", fmt.Errorf("cache: %w", dek.ErrUnknownKey), ErrUnknownKey},
		{"revoked", fmt.Errorf("cache: %w", dek.ErrRevoked), ErrKeyRevoked},
		{"would wait", fmt.Errorf("cache: %w", dek.ErrWouldWait), ErrWouldBlock},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, _, d := cachedKit(t, true)
			msg := k.shapeA(t, k.env, `{"a":1}`)
			k.keys.failWith(c.err)
			_, err := tryOpen(d, msg, false)
			if !errors.Is(err, c.want) {
				t.Fatalf("TryOpen: %v, want %v", err, c.want)
			}
			if c.want != ErrWouldBlock {
				_, oerr := d.Open(context.Background(), Message{Topic: testTopic, Payload: msg})
				if oerr == nil || oerr.Error() != err.Error() {
					t.Errorf("TryOpen: %q, Open: %v", err, oerr)
				}
			}
			if d.win.len() != 0 {
				t.Error("a failed lookup left entries in the replay window")
			}
			k.keys.err.Store(nil)
			if _, err := tryOpen(d, msg, false); err != nil {
				t.Fatalf("TryOpen once the resolver answers: %v", err)
			}
		})
	}
}

// The public vectors, in order: TryOpen with every key answered from the
// cache gives exactly Open's answers (records, reasons, error texts, the
// replay case included); with nothing cached it gives Open's answer for
// what needs no key and ErrWouldBlock for the rest, and records nothing.
func TestTryOpenVectors(t *testing.T) {
	v := vectors.Load(t)
	open, err := New(vectorKeys(t, v), Options{})
	if err != nil {
		t.Fatal(err)
	}
	warm, err := New(newCachedKeys(vectorKeys(t, v), true), Options{})
	if err != nil {
		t.Fatal(err)
	}
	coldKeys := newCachedKeys(vectorKeys(t, v), false)
	cold, err := New(coldKeys, Options{})
	if err != nil {
		t.Fatal(err)
	}
	received := time.Date(2026, 11, 25, 20, 16, 1, 123456789, time.UTC)
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			m := Message{Topic: c.Topic, Payload: []byte(c.Message), ReceivedAt: received}
			want, werr := open.Open(context.Background(), m)
			if got := Reason(werr); werr != nil && got != c.Expect.Reason || werr == nil && !c.Expect.OK ||
				errors.Is(werr, ErrDuplicate) != c.Expect.Duplicate {
				t.Fatalf("Open: %v (reason %q), vector expects ok=%v reason %q duplicate %v", werr, got, c.Expect.OK, c.Expect.Reason, c.Expect.Duplicate)
			}

			got, err := warm.TryOpen(m)
			switch {
			case (err == nil) != (werr == nil):
				t.Fatalf("TryOpen: %v, Open: %v", err, werr)
			case err != nil && err.Error() != werr.Error():
				t.Errorf("TryOpen: %q, Open: %q", err, werr)
			case Reason(err) != Reason(werr):
				t.Errorf("TryOpen reason %q, Open reason %q", Reason(err), Reason(werr))
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("TryOpen record %s, Open record %s", got.AppendJSON(nil), want.AppendJSON(nil))
			}

			got, err = cold.TryOpen(m)
			if errors.Is(err, ErrWouldBlock) {
				switch Reason(werr) {
				case "malformed", "topic_mismatch", "stale":
					t.Errorf("TryOpen with no key cached: ErrWouldBlock for a message Open calls %s without a key", Reason(werr))
				}
				if !reflect.DeepEqual(got, Record{}) {
					t.Error("TryOpen returned a record with ErrWouldBlock")
				}
				return
			}
			if (err == nil) != (werr == nil) || err != nil && err.Error() != werr.Error() || !reflect.DeepEqual(got, want) {
				t.Errorf("TryOpen with no key cached: %v, Open: %v", err, werr)
			}
		})
	}
	if coldKeys.waits.Load() != 0 {
		t.Error("TryOpen called ResolveKey")
	}
	if n := cold.win.len(); n != 0 {
		t.Errorf("replay window of the never-waiting Decryptor holds %d entries, want 0", n)
	}
	if a, b := warm.win.len(), open.win.len(); a != b {
		t.Errorf("replay window after TryOpen: %d entries, after Open: %d", a, b)
	}
}

// TryOpen and Open of one message at once: exactly one accepts it, the
// others are duplicates (exact repeats).
func TestTryOpenRacesOpen(t *testing.T) {
	k, _, d := cachedKit(t, true)
	const n = 32
	for round := range 4 {
		msg := k.shapeA(t, k.env, fmt.Sprintf(`{"round":%d}`, round))
		var wg sync.WaitGroup
		var ok, replays atomic.Int32
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				var err error
				if i%2 == 0 {
					_, err = tryOpen(d, msg, false)
				} else {
					_, err = d.Open(context.Background(), Message{Topic: testTopic, Payload: msg})
				}
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrDuplicate):
					replays.Add(1)
				default:
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", round, err)
		}
		if ok.Load() != 1 || replays.Load() != n-1 {
			t.Fatalf("round %d: %d accepted, %d duplicates; want 1 and %d", round, ok.Load(), replays.Load(), n-1)
		}
	}
}

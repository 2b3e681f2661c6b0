package rotation_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/registry"
	"github.com/decryptd/decryptd/internal/rotation"
)

// feedRegistry is a RegistryView whose change feed the test drives: List
// and Get answer from entries, Watch hands out changes.
type feedRegistry struct {
	mu      sync.Mutex
	entries map[dek.Ref]registry.Entry
	changes chan registry.Change
	watched chan struct{} // closed on the first Watch
	once    sync.Once
}

func newFeedRegistry(es ...registry.Entry) *feedRegistry {
	r := &feedRegistry{entries: map[dek.Ref]registry.Entry{}, changes: make(chan registry.Change, 16), watched: make(chan struct{})}
	for _, e := range es {
		r.entries[e.Ref()] = e
	}
	return r
}

func (r *feedRegistry) Get(_ context.Context, keyID, version string) (registry.Entry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[dek.Ref{KeyID: keyID, Version: version}]
	if !ok {
		return registry.Entry{}, registry.ErrNotFound
	}
	return e, nil
}

func (r *feedRegistry) List(context.Context) ([]registry.Entry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var es []registry.Entry
	for _, e := range r.entries {
		es = append(es, e)
	}
	return es, nil
}

func (r *feedRegistry) Watch(ctx context.Context) (<-chan registry.Change, error) {
	out := make(chan registry.Change)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case c := <-r.changes:
				select {
				case out <- c:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	r.once.Do(func() { close(r.watched) })
	return out, nil
}

// put stores e without telling the feed.
func (r *feedRegistry) put(e registry.Entry) {
	r.mu.Lock()
	r.entries[e.Ref()] = e
	r.mu.Unlock()
}

// recordingAdopter records Adopt calls.
type recordingAdopter struct {
	mu      sync.Mutex
	adopted map[dek.Ref][]string
}

func (a *recordingAdopter) Adopt(_ context.Context, ref dek.Ref, deviceID string, _ time.Duration) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.adopted == nil {
		a.adopted = map[dek.Ref][]string{}
	}
	a.adopted[ref] = append(a.adopted[ref], deviceID)
	return false, nil
}

func (a *recordingAdopter) AddMessages(context.Context, dek.Ref, uint64) error { return nil }

func (a *recordingAdopter) of(ref dek.Ref) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := slices.Clone(a.adopted[ref])
	slices.Sort(s)
	return s
}

// TestTrackerAdoptsRecordsBeforeTheFeed: the backend can decrypt under a
// new version (the key cache reads the registry) before the change feed
// tells the tracker the version exists and is pending. The records that
// decrypted in between still adopt it, once the change arrives: for a
// device key its device, for a group key each member that sent one (not a
// device outside the group). This was TestGroupKeyRotation's intermittent
// "adopted by []" under load.
func TestTrackerAdoptsRecordsBeforeTheFeed(t *testing.T) {
	members := []string{"m-0", "m-1", "m-2", "m-3", "m-4"}
	cases := []struct {
		name    string
		keyID   string
		devices []string
		senders []string
		want    []string
	}{
		{name: "group key", keyID: "group/icu", devices: members,
			senders: []string{"m-0", "m-1", "m-2", "m-3", "ward-7"}, want: []string{"m-0", "m-1", "m-2", "m-3"}},
		{name: "device key", keyID: dek.DeviceKeyID("solo"), senders: []string{"solo"}, want: []string{"solo"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			v1 := registry.Entry{KeyID: tc.keyID, Version: "v1", State: dek.StateActive, Devices: tc.devices}
			reg := newFeedRegistry(v1)
			ad := &recordingAdopter{}
			tr, err := rotation.NewTracker(rotation.TrackerOptions{Registry: reg, Adopter: ad, FlushInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); _ = tr.Run(runCtx) }()
			defer func() { stop(); <-done }()
			select {
			case <-reg.watched:
			case <-ctx.Done():
				t.Fatal("tracker never watched the feed")
			}

			// v2 exists, pending, but the feed has not said so yet.
			v2 := registry.Entry{KeyID: tc.keyID, Version: "v2", State: dek.StateActive, Devices: tc.devices,
				Rotation: registry.Rotation{Pending: true, Supersedes: "v1"}}
			reg.put(v2)
			for _, d := range tc.senders {
				tr.Observe(tc.keyID, "v2", d)
			}
			if got := ad.of(v2.Ref()); len(got) != 0 {
				t.Fatalf("adopted by %v before the tracker knew v2 is pending", got)
			}
			reg.changes <- registry.Change{Kind: registry.ChangeCreated, KeyID: tc.keyID, Version: "v2"}
			for {
				got := ad.of(v2.Ref())
				if slices.Equal(got, tc.want) {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("adoptions recorded for %v, want %v", got, tc.want)
				}
				time.Sleep(10 * time.Millisecond)
			}
			// Once known, a record under a version that is not pending
			// adopts nothing.
			tr.Observe(tc.keyID, "v1", tc.senders[0])
			time.Sleep(50 * time.Millisecond)
			if got := ad.of(v1.Ref()); len(got) != 0 {
				t.Fatalf("v1 (not pending) adopted by %v", got)
			}
		})
	}
}

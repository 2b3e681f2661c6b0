package keycache

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/decryptd/decryptd/internal/dek"
)

// BenchmarkResolveHit is the per-message cost: a cached device key, real
// clock, metrics on.
func BenchmarkResolveHit(b *testing.B) {
	e := newEnv(b, func(o *Options) { o.Now = nil })
	e.addKey("device/dev-1", "v1")
	ctx := context.Background()
	if _, err := e.c.ResolveKey(ctx, "device/dev-1", "v1", "dev-1"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.c.ResolveKey(ctx, "device/dev-1", "v1", "dev-1"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolveHitGroup: a group key of 1,000 devices (map lookup).
func BenchmarkResolveHitGroup(b *testing.B) {
	e := newEnv(b, func(o *Options) { o.Now = nil })
	devices := make([]string, 1000)
	for i := range devices {
		devices[i] = fmt.Sprintf("dev-%d", i)
	}
	e.addKey("group/ward-7", "v3", devices...)
	ctx := context.Background()
	if _, err := e.c.ResolveKey(ctx, "group/ward-7", "v3", "dev-500"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.c.ResolveKey(ctx, "group/ward-7", "v3", "dev-500"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkResolveHitParallel: many goroutines over 10,000 cached keys.
func BenchmarkResolveHitParallel(b *testing.B) {
	e := newEnv(b, func(o *Options) { o.Now = nil })
	const n = 10_000
	ids := make([]string, n)
	devs := make([]string, n)
	ctx := context.Background()
	for i := range n {
		devs[i] = fmt.Sprintf("dev-%d", i)
		ids[i] = "device/" + devs[i]
		e.addKey(ids[i], "v1")
		if _, err := e.c.ResolveKey(ctx, ids[i], "v1", devs[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := e.c.ResolveKey(ctx, ids[i], "v1", devs[i]); err != nil {
				b.Error(err)
				return
			}
			if i++; i == n {
				i = 0
			}
		}
	})
}

// BenchmarkCacheMemory loads 100,000 device keys and reports the heap they
// hold per entry, everything included: cipher, maps, entry, key names.
func BenchmarkCacheMemory(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		e := newEnv(b, func(o *Options) { o.MaxEntries = n })
		ctx := context.Background()
		ids := make([]string, n)
		devs := make([]string, n)
		for i := range n {
			devs[i] = fmt.Sprintf("dev-%06d", i)
			ids[i] = "device/" + devs[i]
			e.addKey(ids[i], "v1")
		}
		before := heapInUse()
		for i := range n {
			if _, err := e.c.ResolveKey(ctx, ids[i], "v1", devs[i]); err != nil {
				b.Fatal(err)
			}
		}
		// Drop what the fakes kept of the loads (handed-out key slices, AADs).
		e.kms.mu.Lock()
		e.kms.handed, e.kms.aads = nil, nil
		e.kms.mu.Unlock()
		e.audit.mu.Lock()
		e.audit.events = nil
		e.audit.mu.Unlock()
		after := heapInUse()
		b.ReportMetric(float64(after-before)/n, "B/entry")
		runtime.KeepAlive(ids)
		runtime.KeepAlive(devs)
		runtime.KeepAlive(e)
		e.c.Close()
	}
}

// BenchmarkAEADSize reports the heap of one AES-256-GCM cipher.AEAD, the
// bulk of an entry.
func BenchmarkAEADSize(b *testing.B) {
	const n = 10_000
	for b.Loop() {
		keep := make([]cipher.AEAD, n)
		key := make([]byte, 32)
		before := heapInUse()
		for i := range keep {
			block, _ := aes.NewCipher(key)
			keep[i], _ = cipher.NewGCM(block)
		}
		after := heapInUse()
		b.ReportMetric(float64(after-before)/n, "B/aead")
		runtime.KeepAlive(keep)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkBaselineLockedMap is the floor of a locked-map design: a read
// lock and one map lookup, nothing else. BenchmarkResolveHit over this is
// the cost of the cache's own logic (clock, expiry, device check, LRU touch,
// counter).
func BenchmarkBaselineLockedMap(b *testing.B) {
	var mu sync.RWMutex
	m := map[dek.Ref]*entry{}
	for i := range 1000 {
		m[dek.Ref{KeyID: fmt.Sprintf("device/dev-%d", i), Version: "v1"}] = &entry{}
	}
	keyID, version := "device/dev-1", "v1"
	b.ReportAllocs()
	for b.Loop() {
		mu.RLock()
		e := m[dek.Ref{KeyID: keyID, Version: version}]
		mu.RUnlock()
		if e == nil {
			b.Fatal("missing")
		}
	}
}

package keyops

import (
	"context"
	"sync"
	"sync/atomic"
)

// the first error; after it, the indices not yet started are skipped.
func (op *Ops) parallel(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	workers := op.o.ProvisionWorkers
	if workers <= 0 {
		workers = defaultProvisionWorkers
	}
	workers = min(workers, n)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				mu.Lock()
				stop := firstErr != nil
				mu.Unlock()
				if stop {
					return
				}
				err := ctx.Err()
				if err == nil {
					err = fn(ctx, i)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// reporter calls a progress function, never concurrently, at most about a
// hundred times, and with the total only once everything is done.
type reporter struct {
	fn    func(done, total int)
	total int
	step  int

	mu   sync.Mutex
	n    int
	last int
}

func newReporter(fn func(done, total int), total int) *reporter {
	return &reporter{fn: fn, total: total, step: max(1, total/100)}
}

func (r *reporter) add(n int) {
	if r.fn == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n = min(r.n+n, r.total)
	if r.n < r.total && r.n-r.last >= r.step {
		r.last = r.n
		r.fn(r.n, r.total)
	}
}

func (r *reporter) done(total int) {
	if r.fn == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fn(total, total)
}

package kpemu

import (
	"math"
	"net/http"
	"strconv"
	"time"
)

// bucket is a token bucket for Options.RateLimit; e.mu guards it.
type bucket struct {
	tokens float64
	last   time.Time
}

// rateLimited answers 429 with Retry-After when the request exceeds
// Options.RateLimit; it reports whether it answered.
func (e *Emulator) rateLimited(w http.ResponseWriter) bool {
	rate := e.opts.RateLimit
	if rate <= 0 {
		return false
	}
	burst := float64(e.opts.RateBurst)
	if burst < 1 {
		burst = math.Max(1, math.Ceil(rate))
	}
	e.mu.Lock()
	now := e.now()
	b := &e.bucket
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = math.Min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	ok := b.tokens >= 1
	if ok {
		b.tokens--
	}
	wait := (1 - b.tokens) / rate
	e.mu.Unlock()
	if ok {
		return false
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait))))
	writeError(w, http.StatusTooManyRequests, "Too Many Requests: The rate limit of the instance was exceeded. Please see 'reasons' for more details (TOO_MANY_REQUESTS_ERR)",
		newReason(http.StatusTooManyRequests, "TOO_MANY_REQUESTS_ERR", "Too many requests: retry after the time given in Retry-After"))
	return true
}

package kpemu

import (
	"net"
	"net/http"
	"time"
)

// Outage is how an unavailable endpoint behaves.
type Outage int

const (
	// OutageNone: the endpoint answers.
	OutageNone Outage = iota
	// OutageHang: requests are held without an answer until the client
	// gives up, the outage is lifted or the emulator is closed.
	OutageHang
	// OutageReset: the connection is closed (TCP reset) without an answer.
	OutageReset
)

// Faults are injected into requests. The Key Protect API and the IAM token
// endpoint fail independently. Set them with SetFaults at any time.
type Faults struct {
	// Latency delays every Key Protect API answer.
	Latency time.Duration
	// FailStatus is the status of injected API failures; 0 means 503.
	FailStatus int
	// FailNext makes the next N API requests fail with FailStatus.
	FailNext int
	// FailRate makes this fraction (0..1) of API requests fail with
	// FailStatus, decided by dice seeded from Options.Seed.
	FailRate float64
	// RetryAfter, if non-empty, is sent as Retry-After on injected 429 and
	// 503 answers (the client honours it there; "0" retries at once).
	RetryAfter string
	// Outage makes the API hang or reset connections.
	Outage Outage

	// IAMStatus, if non-zero, answers every token request with it.
	IAMStatus int
	// IAMFailNext makes the next N token requests fail with IAMStatus (503
	// when IAMStatus is 0).
	IAMFailNext int
	// IAMOutage makes the token endpoint hang or reset connections.
	IAMOutage Outage
}

// SetFaults replaces the injected faults and frees requests held by a
// previous hang.
func (e *Emulator) SetFaults(f Faults) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = f
	close(e.release)
	e.release = make(chan struct{})
}

// Faults returns the faults in force (FailNext counts down as it fires).
func (e *Emulator) Faults() Faults {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.faults
}

// FailNext makes the next n API requests fail with status, keeping the
// other faults.
func (e *Emulator) FailNext(n, status int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults.FailNext, e.faults.FailStatus = n, status
}

// apiFault applies the API faults; it reports whether it answered.
func (e *Emulator) apiFault(w http.ResponseWriter, r *http.Request) bool {
	e.mu.Lock()
	f := e.faults
	release := e.release
	fail := false
	if e.faults.FailNext > 0 {
		e.faults.FailNext--
		fail = true
	} else if f.FailRate > 0 && e.dice.Float64() < f.FailRate {
		fail = true
	}
	e.mu.Unlock()

	switch f.Outage {
	case OutageHang:
		e.hang(r, release, 0)
		return true
	case OutageReset:
		reset(w)
		return true
	}
	if f.Latency > 0 && !e.hang(r, release, f.Latency) {
		return true
	}
	if fail {
		status := f.FailStatus
		if status == 0 {
			status = http.StatusServiceUnavailable
		}
		if f.RetryAfter != "" && (status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable) {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		writeError(w, status, http.StatusText(status)+": injected by kpemu", nil)
		return true
	}
	return false
}

// iamFault applies the IAM faults; it reports whether it answered.
func (e *Emulator) iamFault(w http.ResponseWriter, r *http.Request) bool {
	e.mu.Lock()
	f := e.faults
	release := e.release
	status := f.IAMStatus
	if e.faults.IAMFailNext > 0 {
		e.faults.IAMFailNext--
		if status == 0 {
			status = http.StatusServiceUnavailable
		}
	}
	e.mu.Unlock()
	switch f.IAMOutage {
	case OutageHang:
		e.hang(r, release, 0)
		return true
	case OutageReset:
		reset(w)
		return true
	}
	if status != 0 {
		writeIAMError(w, status, "BXNIM0400E", http.StatusText(status)+": injected by kpemu")
		return true
	}
	return false
}

// hang waits d (forever when 0) and reports whether the wait ran out; it
// returns early when the client goes away, the faults change or the
// emulator closes.
func (e *Emulator) hang(r *http.Request, release chan struct{}, d time.Duration) bool {
	var timeout <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-timeout:
		return true
	case <-r.Context().Done():
	case <-release:
		// Faults changed: a latency wait still answers, a hang ends without one.
		return d > 0
	case <-e.done:
	}
	return false
}

// reset closes the connection under the request with a TCP reset.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 or a test recorder: the nearest thing is a panic that the
		// server turns into a closed stream.
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

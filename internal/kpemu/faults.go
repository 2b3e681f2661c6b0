package kpemu

import (
	"crypto/tls"
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

// apiFault applies the API faults; it reports whether it answered. A
// request held by a hang that is lifted goes on as if it had just arrived.
func (e *Emulator) apiFault(w http.ResponseWriter, r *http.Request) bool {
	f, release, answered := e.outage(w, r, func(f Faults) Outage { return f.Outage })
	if answered {
		return true
	}
	if f.Latency > 0 && !e.wait(r, release, f.Latency) {
		panic(http.ErrAbortHandler)
	}
	e.mu.Lock()
	f = e.faults
	fail := false
	if e.faults.FailNext > 0 {
		e.faults.FailNext--
		fail = true
	} else if f.FailRate > 0 && e.dice.Float64() < f.FailRate {
		fail = true
	}
	e.mu.Unlock()
	if !fail {
		return false
	}
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

// iamFault applies the IAM faults; it reports whether it answered.
func (e *Emulator) iamFault(w http.ResponseWriter, r *http.Request) bool {
	if _, _, answered := e.outage(w, r, func(f Faults) Outage { return f.IAMOutage }); answered {
		return true
	}
	e.mu.Lock()
	status := e.faults.IAMStatus
	if e.faults.IAMFailNext > 0 {
		e.faults.IAMFailNext--
		if status == 0 {
			status = http.StatusServiceUnavailable
		}
	}
	e.mu.Unlock()
	if status != 0 {
		writeIAMError(w, status, "BXNIM0400E", http.StatusText(status)+": injected by kpemu")
		return true
	}
	return false
}

// outage applies the outage which reads from the faults: a hang holds the
// request until the faults change and then looks again, a reset answers
// (answered true). It returns the faults in force and the channel that
// closes when they change.
func (e *Emulator) outage(w http.ResponseWriter, r *http.Request, which func(Faults) Outage) (f Faults, release chan struct{}, answered bool) {
	for {
		e.mu.Lock()
		f, release = e.faults, e.release
		e.mu.Unlock()
		switch which(f) {
		case OutageHang:
			if !e.wait(r, release, 0) {
				panic(http.ErrAbortHandler) // drop the connection, log nothing
			}
		case OutageReset:
			reset(w)
			return f, release, true
		default:
			return f, release, false
		}
	}
}

// wait waits d (forever when 0). It reports true when the request should go
// on (the time ran out, or the faults changed) and false when it should be
// dropped (the client went away, or the emulator is closing).
func (e *Emulator) wait(r *http.Request, release chan struct{}, d time.Duration) bool {
	var timeout <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-timeout:
		return true
	case <-release:
		return true
	case <-r.Context().Done():
		return false
	case <-e.done:
		return false
	}
}

// reset closes the connection under the request with a TCP reset.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 or a test recorder: abort the stream instead.
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn() // reset the TCP connection, not the TLS session
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

package kpemu

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// FaultsJSON is Faults as the control endpoint reads and writes them, plus
// Refuse (Server.SetRefuse). Outages are "none", "hang" or "reset";
// Latency is a Go duration ("2s").
type FaultsJSON struct {
	Outage      string  `json:"outage,omitempty"`
	Refuse      bool    `json:"refuse,omitempty"`
	Latency     string  `json:"latency,omitempty"`
	FailStatus  int     `json:"fail_status,omitempty"`
	FailNext    int     `json:"fail_next,omitempty"`
	FailRate    float64 `json:"fail_rate,omitempty"`
	RetryAfter  string  `json:"retry_after,omitempty"`
	IAMStatus   int     `json:"iam_status,omitempty"`
	IAMFailNext int     `json:"iam_fail_next,omitempty"`
	IAMOutage   string  `json:"iam_outage,omitempty"`
}

var outageNames = map[Outage]string{OutageNone: "none", OutageHang: "hang", OutageReset: "reset"}

func parseOutage(s string) (Outage, error) {
	if s == "" {
		return OutageNone, nil
	}
	for o, n := range outageNames {
		if n == s {
			return o, nil
		}
	}
	return 0, fmt.Errorf("outage %q: want none, hang or reset", s)
}

// Faults converts j, checking every field.
func (j FaultsJSON) Faults() (Faults, error) {
	var f Faults
	var err error
	if f.Outage, err = parseOutage(j.Outage); err != nil {
		return Faults{}, err
	}
	if f.IAMOutage, err = parseOutage(j.IAMOutage); err != nil {
		return Faults{}, fmt.Errorf("iam_%w", err)
	}
	if j.Latency != "" {
		if f.Latency, err = time.ParseDuration(j.Latency); err != nil || f.Latency < 0 {
			return Faults{}, fmt.Errorf("latency %q: want a non-negative Go duration such as 2s", j.Latency)
		}
	}
	for name, st := range map[string]int{"fail_status": j.FailStatus, "iam_status": j.IAMStatus} {
		if st != 0 && (st < 400 || st > 599) {
			return Faults{}, fmt.Errorf("%s %d: want 400-599 (0: the default)", name, st)
		}
	}
	if j.FailNext < 0 || j.IAMFailNext < 0 || j.FailRate < 0 || j.FailRate > 1 {
		return Faults{}, fmt.Errorf("fail_next and iam_fail_next must be >= 0, fail_rate within 0..1")
	}
	f.FailStatus, f.FailNext, f.FailRate, f.RetryAfter = j.FailStatus, j.FailNext, j.FailRate, j.RetryAfter
	f.IAMStatus, f.IAMFailNext = j.IAMStatus, j.IAMFailNext
	return f, nil
}

func faultsJSON(f Faults, refuse bool) FaultsJSON {
	j := FaultsJSON{
		Outage: outageNames[f.Outage], Refuse: refuse, FailStatus: f.FailStatus, FailNext: f.FailNext,
		FailRate: f.FailRate, RetryAfter: f.RetryAfter, IAMStatus: f.IAMStatus, IAMFailNext: f.IAMFailNext,
		IAMOutage: outageNames[f.IAMOutage],
	}
	if f.Latency > 0 {
		j.Latency = f.Latency.String()
	}
	return j
}

// Presets are the faults POST /faults/{name} switches to, each replacing
// whatever was in force: the outages a fault suite needs by name.
var Presets = map[string]FaultsJSON{
	"none":   {},
	"hang":   {Outage: "hang", IAMOutage: "hang"},
	"reset":  {Outage: "reset", IAMOutage: "reset"},
	"refuse": {Refuse: true},
	"503":    {FailStatus: http.StatusServiceUnavailable, FailRate: 1},
	"429":    {FailStatus: http.StatusTooManyRequests, FailRate: 1, RetryAfter: "1"},
}

// ControlHandler is the runtime fault control of s (cmd/kpemu serves it on
// its own address, so it stays reachable while s refuses connections):
//
//	GET    /faults          the faults in force (FaultsJSON)
//	PUT    /faults          replace them with the FaultsJSON body
//	DELETE /faults          clear them (serve normally again)
//	POST   /faults/{preset} switch to a preset: none, hang, reset, refuse, 503, 429
//	GET    /calls           requests per operation so far
//
// It has no authentication: bind it to loopback.
func (s *Server) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /faults", func(w http.ResponseWriter, r *http.Request) { s.writeFaults(w) })
	mux.HandleFunc("PUT /faults", func(w http.ResponseWriter, r *http.Request) {
		var j FaultsJSON
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&j); err != nil {
			http.Error(w, "faults: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.applyFaults(w, j)
	})
	mux.HandleFunc("DELETE /faults", func(w http.ResponseWriter, r *http.Request) { s.applyFaults(w, FaultsJSON{}) })
	mux.HandleFunc("POST /faults/{preset}", func(w http.ResponseWriter, r *http.Request) {
		j, ok := Presets[r.PathValue("preset")]
		if !ok {
			names := make([]string, 0, len(Presets))
			for n := range Presets {
				names = append(names, n)
			}
			http.Error(w, "unknown preset; one of: "+strings.Join(names, ", "), http.StatusNotFound)
			return
		}
		s.applyFaults(w, j)
	})
	mux.HandleFunc("GET /calls", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.AllCalls()) })
	return mux
}

func (s *Server) applyFaults(w http.ResponseWriter, j FaultsJSON) {
	f, err := j.Faults()
	if err != nil {
		http.Error(w, "faults: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := s.SetRefuse(j.Refuse); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.SetFaults(f)
	s.writeFaults(w)
}

func (s *Server) writeFaults(w http.ResponseWriter) {
	s.mu.Lock()
	refusing := s.refusing
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, faultsJSON(s.Faults(), refusing))
}

package health

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Cause is what a degraded state is blamed on.
type Cause string

// The causes, always all reported.
const (
	KMS      Cause = "kms"      // KMS calls fail as transient (unreachable, 5xx, 429, timeout)
	Registry Cause = "registry" // registry reads fail, or it is not reachable at start
	Sink     Cause = "sink"     // a sink (or the dead-letter sink) is down, holding its records
	Broker   Cause = "broker"   // an input is not connected and subscribed
)

// Causes lists every cause in report order.
var Causes = []Cause{KMS, Registry, Sink, Broker}

// Options configure a Tracker.
type Options struct {
	// Registerer receives decryptd_degraded (nil: not exported).
	Registerer prometheus.Registerer
	// Logger gets each change of a cause (nil: none).
	Logger *zap.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Tracker holds the degraded state. Create it with New.
type Tracker struct {
	now    func() time.Time
	log    *zap.Logger
	desc   *prometheus.Desc
	mu     sync.Mutex
	causes map[Cause]*cause
	probes map[Cause]func() (bool, string)
}

type cause struct {
	since time.Time
	parts map[string]string // degraded part -> reason
}

// New makes a Tracker with every cause healthy and registers its gauge.
func New(o Options) (*Tracker, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	t := &Tracker{
		now: o.Now, log: o.Logger.With(zap.String("component", "health")),
		desc: prometheus.NewDesc("decryptd_degraded",
			"1 while decryptd is degraded for the cause (kms, registry, sink, broker), else 0; /healthz gives the reason and since when.",
			[]string{"cause"}, nil),
		causes: map[Cause]*cause{},
		probes: map[Cause]func() (bool, string){},
	}
	for _, c := range Causes {
		t.causes[c] = &cause{parts: map[string]string{}}
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(t); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Set marks part of c degraded (with reason) or healthy. part names the
// thing within the cause ("" when it has one): a sink's name, "lookup".
func (t *Tracker) Set(c Cause, part string, degraded bool, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setLocked(c, part, degraded, reason)
}

func (t *Tracker) setLocked(c Cause, part string, degraded bool, reason string) {
	cs := t.causes[c]
	if cs == nil {
		return // not a cause: ignored rather than exported
	}
	was := len(cs.parts) > 0
	if degraded {
		if cs.parts[part] == reason {
			return
		}
		cs.parts[part] = reason
	} else {
		if _, ok := cs.parts[part]; !ok {
			return
		}
		delete(cs.parts, part)
	}
	now := len(cs.parts) > 0
	switch {
	case now && !was:
		cs.since = t.now()
		t.log.Warn("degraded", zap.String("cause", string(c)), zap.String("reason", cs.reason()))
	case !now && was:
		t.log.Info("no longer degraded", zap.String("cause", string(c)), zap.Duration("for", t.now().Sub(cs.since)))
		cs.since = time.Time{}
	}
}

// Probe makes f the source of c's state (part ""): it is asked on every
// Report and scrape.
func (t *Tracker) Probe(c Cause, f func() (degraded bool, reason string)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.probes[c] = f
}

// reason joins the parts' reasons: "down" or "records: down; audit: down".
func (cs *cause) reason() string {
	keys := slices.Sorted(maps.Keys(cs.parts))
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if k == "" {
			out = append(out, cs.parts[k])
		} else {
			out = append(out, k+": "+cs.parts[k])
		}
	}
	return strings.Join(out, "; ")
}

// State is one cause in a Report.
type State struct {
	Degraded bool       `json:"degraded"`
	Since    *time.Time `json:"since,omitempty"`
	Reason   string     `json:"reason,omitempty"`
	// Parts are the degraded parts (sink names), when the cause has
	// named parts.
	Parts []string `json:"parts,omitempty"`
}

// Report is the state of every cause.
type Report struct {
	// Status is "ok", or "degraded" when any cause is.
	Status string          `json:"status"`
	Causes map[Cause]State `json:"causes"`
}

// Report runs the probes and returns every cause's state.
func (t *Tracker) Report() Report {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c, f := range t.probes {
		d, why := f()
		t.setLocked(c, "", d, why)
	}
	r := Report{Status: "ok", Causes: make(map[Cause]State, len(Causes))}
	for _, c := range Causes {
		cs := t.causes[c]
		s := State{Degraded: len(cs.parts) > 0}
		if s.Degraded {
			r.Status = "degraded"
			since := cs.since.UTC()
			s.Since, s.Reason = &since, cs.reason()
			for k := range cs.parts {
				if k != "" {
					s.Parts = append(s.Parts, k)
				}
			}
			slices.Sort(s.Parts)
		}
		r.Causes[c] = s
	}
	return r
}

// Degraded reports whether c is degraded now (probes run).
func (t *Tracker) Degraded(c Cause) bool { return t.Report().Causes[c].Degraded }

// Describe implements prometheus.Collector.
func (t *Tracker) Describe(ch chan<- *prometheus.Desc) { ch <- t.desc }

// Collect implements prometheus.Collector: one series per cause.
func (t *Tracker) Collect(ch chan<- prometheus.Metric) {
	r := t.Report()
	for _, c := range Causes {
		v := 0.0
		if r.Causes[c].Degraded {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(t.desc, prometheus.GaugeValue, v, string(c))
	}
}

package keycache

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// result is the outcome of one lookup, the label of
// decryptd_dek_cache_requests_total.
type result int

const (
	resHit      result = iota // served from a live entry
	resMiss                   // waited for a load (whatever its outcome)
	resNegative               // a cached unknown/revoked/failed answer
	resStale                  // served past its lifetime, KMS or registry down
	resDenied                 // cached, but the device may not use the key
	numResults
)

func (r result) String() string {
	switch r {
	case resHit:
		return "hit"
	case resMiss:
		return "miss"
	case resNegative:
		return "negative"
	case resStale:
		return "stale"
	case resDenied:
		return "denied"
	}
	return "unknown"
}

// metrics of the cache. The lookup counters live in the shards (see
// shard.reqs) and are summed at scrape time, so the hit path does not make
// every core write one shared counter.
type metrics struct {
	evictions map[string]prometheus.Counter
	unwrap    map[UnwrapResult]prometheus.Counter
	unwrapDur prometheus.Observer
}

const (
	evictCapacity = "capacity"
	evictRevoked  = "revoked"
	evictNotFound = "not_found"
	evictError    = "error"
)

func newMetrics(reg prometheus.Registerer, c *Cache) (*metrics, error) {
	m := &metrics{
		evictions: map[string]prometheus.Counter{},
		unwrap:    map[UnwrapResult]prometheus.Counter{},
	}
	requests := requestsCollector{c: c, desc: prometheus.NewDesc("decryptd_dek_cache_requests_total",
		"DEK lookups by outcome: hit, miss (waited for a load), negative (cached unknown or revoked answer), stale (served past lifetime while the KMS or registry is down), denied (device may not use the key).",
		[]string{"result"}, nil)}
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "decryptd_dek_cache_entries",
		Help: "Entries in the DEK cache, negative ones included.",
	}, func() float64 { return float64(c.count.Load()) })
	stale := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "decryptd_dek_cache_stale_serving",
		Help: "Cached DEKs past their lifetime that are still served because the KMS or registry cannot be reached.",
	}, func() float64 { return float64(c.staleServing()) })
	evictions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "decryptd_dek_cache_evictions_total",
		Help: "Entries removed from the DEK cache: capacity (least recently used), revoked, not_found, error (KMS refused the unwrap).",
	}, []string{"reason"})
	for _, r := range []string{evictCapacity, evictRevoked, evictNotFound, evictError} {
		m.evictions[r] = evictions.WithLabelValues(r)
	}
	kmsReqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "decryptd_kms_requests_total",
		Help: "KMS calls by operation and result (ok, transient, revoked, error).",
	}, []string{"operation", "result"})
	for _, r := range []UnwrapResult{UnwrapOK, UnwrapTransient, UnwrapRevoked, UnwrapError} {
		m.unwrap[r] = kmsReqs.WithLabelValues("unwrap", string(r))
	}
	kmsDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "decryptd_kms_request_duration_seconds",
		Help:    "Duration of KMS calls by operation.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"operation"})
	m.unwrapDur = kmsDur.WithLabelValues("unwrap")

	if reg != nil {
		var errs []error
		for _, col := range []prometheus.Collector{requests, entries, stale, evictions, kmsReqs, kmsDur} {
			if err := reg.Register(col); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("keycache: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observeUnwrap(r UnwrapResult, d time.Duration) {
	m.unwrap[r].Inc()
	m.unwrapDur.Observe(d.Seconds())
}

// requestsCollector sums the per-shard lookup counters at scrape time.
type requestsCollector struct {
	c    *Cache
	desc *prometheus.Desc
}

func (rc requestsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rc.desc }

func (rc requestsCollector) Collect(ch chan<- prometheus.Metric) {
	var sums [numResults]uint64
	for i := range rc.c.shards {
		for r := range sums {
			sums[r] += rc.c.shards[i].reqs[r].Load()
		}
	}
	for r, n := range sums {
		ch <- prometheus.MustNewConstMetric(rc.desc, prometheus.CounterValue, float64(n), result(r).String())
	}
}

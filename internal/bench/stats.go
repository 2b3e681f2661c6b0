package bench

import (
	"math"
	"slices"
)

// Latency summarises a latency distribution in milliseconds.
type Latency struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
	// CDF holds the latency at each percentile 0, 1, ..., 100 (for the
	// chart).
	CDF []float64 `json:"cdf_ms,omitempty"`
}

// summarise sorts ms in place and summarises it.
func summarise(ms []float64) Latency {
	if len(ms) == 0 {
		return Latency{}
	}
	slices.Sort(ms)
	l := Latency{Count: len(ms), P50: quantile(ms, .50), P90: quantile(ms, .90), P99: quantile(ms, .99), Max: ms[len(ms)-1]}
	l.CDF = make([]float64, 101)
	for i := range l.CDF {
		l.CDF[i] = quantile(ms, float64(i)/100)
	}
	return l
}

// quantile of sorted values, nearest rank.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// median of values (not modified); the lower middle for an even count
// would bias toward the slower side, so an even count averages the two.
func median(values []float64) float64 {
	if len(values) == 0 {
		return math.NaN()
	}
	s := slices.Clone(values)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// histogramQuantile estimates a quantile from cumulative histogram
// buckets (upper bounds, counts) by linear interpolation inside the
// bucket, as Prometheus' histogram_quantile does.
func histogramQuantile(q float64, bounds []float64, cumulative []uint64) float64 {
	if len(bounds) == 0 || len(bounds) != len(cumulative) {
		return math.NaN()
	}
	total := cumulative[len(cumulative)-1]
	if total == 0 {
		return math.NaN()
	}
	rank := q * float64(total)
	lower, prev := 0.0, uint64(0)
	for i, b := range bounds {
		if float64(cumulative[i]) >= rank {
			if math.IsInf(b, 1) {
				return lower
			}
			inBucket := float64(cumulative[i] - prev)
			if inBucket == 0 {
				return b
			}
			return lower + (b-lower)*(rank-float64(prev))/inBucket
		}
		lower, prev = b, cumulative[i]
	}
	return bounds[len(bounds)-1]
}

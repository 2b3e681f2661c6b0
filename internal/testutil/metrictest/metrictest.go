// Package metrictest reads metrics from a Prometheus registry in tests,
// written once: Value finds a metric by name and labels and returns its
// value (a histogram's sample count); Series takes the series as the
// exposition format writes it (name{label="value"}); Lookup reports an
// absent series instead of failing.
package metrictest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value returns the value of the metric name whose labels include the
// given name=value pairs (a counter's or gauge's value, a histogram's
// sample count), failing the test when there is none.
func Value(tb testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	tb.Helper()
	v, ok, err := Lookup(g, name, labels...)
	if err != nil {
		tb.Fatal(err)
	}
	if !ok {
		tb.Fatalf("no metric %s%v", name, labels)
	}
	return v
}

// Series is Value for a series written as the exposition format names it:
// name or name{label="value",...}.
func Series(tb testing.TB, g prometheus.Gatherer, series string) float64 {
	tb.Helper()
	name, labels, err := ParseSeries(series)
	if err != nil {
		tb.Fatal(err)
	}
	return Value(tb, g, name, labels...)
}

// Lookup is Value without a test: ok is false when no metric name has the
// labels (a vector none of whose series has been touched yet).
func Lookup(g prometheus.Gatherer, name string, labels ...string) (v float64, ok bool, err error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, false, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !HasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true, nil
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true, nil
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true, nil
			}
		}
	}
	return 0, false, nil
}

// ParseSeries splits name{a="x",b="y"} into the name and the label pairs
// Value takes (a, x, b, y).
func ParseSeries(series string) (name string, labels []string, err error) {
	name, rest, braced := strings.Cut(series, "{")
	if !braced {
		return name, nil, nil
	}
	rest, closed := strings.CutSuffix(rest, "}")
	if !closed {
		return "", nil, fmt.Errorf("metrictest: series %q: no closing brace", series)
	}
	for rest != "" {
		label, value, found := strings.Cut(rest, "=")
		if !found {
			return "", nil, fmt.Errorf("metrictest: series %q: label without a value", series)
		}
		quoted, err := strconv.QuotedPrefix(value)
		if err != nil {
			return "", nil, fmt.Errorf("metrictest: series %q: %w", series, err)
		}
		unquoted, _ := strconv.Unquote(quoted)
		labels = append(labels, strings.TrimSpace(label), unquoted)
		rest = strings.TrimPrefix(value[len(quoted):], ",")
	}
	return name, labels, nil
}

// HasLabel reports whether m has the label name with value.
func HasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

package metrictest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestValue(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "h"}, []string{"reason"})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h_seconds", Help: "h"})
	reg.MustRegister(c, h)
	c.WithLabelValues("a").Add(2)
	c.WithLabelValues("b").Add(5)
	h.Observe(1)
	h.Observe(2)
	if v := Value(t, reg, "c_total", "reason", "b"); v != 5 {
		t.Errorf("c_total{reason=b} = %v", v)
	}
	if v := Value(t, reg, "h_seconds"); v != 2 {
		t.Errorf("h_seconds count = %v", v)
	}
}

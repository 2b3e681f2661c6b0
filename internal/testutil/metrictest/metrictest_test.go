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

func TestSeriesAndLookup(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "h"}, []string{"op", "result"})
	reg.MustRegister(c)
	c.WithLabelValues("unwrap", "ok").Add(3)
	c.WithLabelValues("unwrap", "fail").Add(1)
	if v := Series(t, reg, `c_total{op="unwrap",result="fail"}`); v != 1 {
		t.Errorf("fail series = %v, want 1", v)
	}
	if _, ok, err := Lookup(reg, "c_total", "result", "timeout"); ok || err != nil {
		t.Errorf("Lookup of an untouched series: ok %v, err %v", ok, err)
	}
	for _, bad := range []string{`c_total{op="x"`, `c_total{op}`, `c_total{op=x}`} {
		if _, _, err := ParseSeries(bad); err == nil {
			t.Errorf("ParseSeries(%s): no error", bad)
		}
	}
	name, labels, err := ParseSeries(`a_b{x="1, 2",y="q\"r"}`)
	if err != nil || name != "a_b" || len(labels) != 4 || labels[1] != "1, 2" || labels[3] != `q"r` {
		t.Errorf("ParseSeries: %q %q %v", name, labels, err)
	}
}

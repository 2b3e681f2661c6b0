package bench

import (
	"fmt"
	"math"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// drainGauges is what one gather of the daemon's registry tells the drain
// loop.
type drainGauges struct {
	delivered float64 // records the records sink acknowledged holding
	acked     float64 // messages acknowledged to the broker
	inflight  float64 // messages held between receipt and acknowledgement
}

// gatherDrain reads them; a family not exported yet counts as zero.
func gatherDrain(g prometheus.Gatherer) (drainGauges, error) {
	var d drainGauges
	mfs, err := g.Gather()
	if err != nil {
		return d, fmt.Errorf("gather metrics: %w", err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "decryptd_records_delivered_total":
			d.delivered = familySum(mf, "sink", recordsSink)
		case "decryptd_mqtt_ack_latency_seconds":
			d.acked = familySum(mf, "", "")
		case "decryptd_inflight_messages":
			d.inflight = familySum(mf, "", "")
		}
	}
	return d, nil
}

// metricSum adds up every sample of a counter or gauge family, or the
// sample counts of a histogram family.
func metricSum(g prometheus.Gatherer, name string) (float64, error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return familySum(mf, "", ""), nil
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// familySum adds up the samples of a counter or gauge family, or the
// sample counts of a histogram family, over the series labelled
// label=value (every series when label is empty).
func familySum(mf *dto.MetricFamily, label, value string) float64 {
	sum := 0.0
	for _, m := range mf.GetMetric() {
		if label != "" && !hasLabel(m, label, value) {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// histogram returns the cumulative buckets of a one-series histogram,
// +Inf last.
func histogram(g prometheus.Gatherer, name string) ([]float64, []uint64, error) {
	mfs, err := g.Gather()
	if err != nil {
		return nil, nil, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		var bounds []float64
		var cum []uint64
		for _, b := range h.GetBucket() {
			bounds = append(bounds, b.GetUpperBound())
			cum = append(cum, b.GetCumulativeCount())
		}
		bounds = append(bounds, math.Inf(1))
		cum = append(cum, h.GetSampleCount())
		return bounds, cum, nil
	}
	return nil, nil, fmt.Errorf("histogram %s not found", name)
}

// histogramMean is sum/count of the series of a histogram family whose
// labels include sink=<sinkName> (any series when sinkName is empty).
func histogramMean(g prometheus.Gatherer, name, sinkName string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := sinkName == "" || hasLabel(m, "sink", sinkName)
			if h := m.GetHistogram(); match && h != nil && h.GetSampleCount() > 0 {
				return h.GetSampleSum() / float64(h.GetSampleCount())
			}
		}
	}
	return 0
}

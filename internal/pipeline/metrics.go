package pipeline

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/decryptd/decryptd/internal/decrypt"
)

// Outcomes of one processed message (decryptd_messages_processed_total).
const (
	OutcomeDelivered    = "delivered"
	OutcomeDeadLettered = "dead_lettered"
	OutcomeDuplicate    = "duplicate"
)

// Causes of a duplicate (decryptd_duplicates_total, Result.Cause): an exact
// repeat of a message already accepted (envelope amendment 1), told apart
// by the MQTT DUP flag.
const (
	// DuplicateRedelivery: the broker redelivered it (DUP set), for
	// instance after a reconnect.
	DuplicateRedelivery = "redelivery"
	// DuplicateRepeat: the device sent it again (DUP clear at us), for
	// instance a QoS 1 resend after a lost PUBACK, which the broker
	// forwards as a new message.
	DuplicateRepeat = "repeat"
)

// DuplicateCauses is every cause a duplicate is counted under.
func DuplicateCauses() []string { return []string{DuplicateRedelivery, DuplicateRepeat} }

// ReasonSinkRejected is the dead-letter reason of a record a sink refused
// for good (sink.ErrBadRecord). It is not one of the spec's reasons: the
// message decrypted, but cannot be written as it is.
const ReasonSinkRejected = "sink_rejected"

// Causes of transient retries (decryptd_transient_retries_total).
const (
	causeKMS  = "kms"
	causeSink = "sink"
)

type metrics struct {
	processed     *prometheus.CounterVec
	delivered     *prometheus.CounterVec
	failures      *prometheus.CounterVec
	duplicates    *prometheus.CounterVec
	deadLetters   *prometheus.CounterVec
	decryptDur    prometheus.Histogram
	e2e           prometheus.Histogram
	sinkWrite     *prometheus.HistogramVec
	sinkBatch     *prometheus.HistogramVec
	sinkErrors    *prometheus.CounterVec
	sinkUp        *prometheus.GaugeVec
	retries       *prometheus.CounterVec
	deadLetterSet map[string]bool

	// processed's children, looked up once: they count every message.
	processedDelivered, processedDeadLettered, processedDuplicate prometheus.Counter
}

// deadLetterReasons is every reason a message may be dead-lettered under.
func deadLetterReasons() []string { return append(decrypt.Reasons(), ReasonSinkRejected) }

func newMetrics(reg prometheus.Registerer, sinkNames []string) (*metrics, error) {
	m := &metrics{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_messages_processed_total",
			Help: "Messages the pipeline finished with, by outcome: delivered (every sink holds the record), dead_lettered, duplicate (an exact repeat of a message already delivered).",
		}, []string{"outcome"}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_records_delivered_total",
			Help: "Records a sink acknowledged holding, by sink (dead letters included, under the dead-letter sink's name).",
		}, []string{"sink"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_decrypt_failures_total",
			Help: "Messages that could not be decrypted, by the spec's failure reason.",
		}, []string{"reason"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_duplicates_total",
			Help: "Exact repeats of messages already delivered, acknowledged again without a new record, by cause: redelivery (the broker's, DUP set), repeat (the device sent it again, e.g. a QoS 1 resend).",
		}, []string{"cause"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_dead_letters_total",
			Help: "Messages the dead-letter sink holds, by reason (the spec's reasons, and sink_rejected).",
		}, []string{"reason"}),
		decryptDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "decryptd_decrypt_duration_seconds",
			Help:    "Duration of one decryption attempt (key lookup included).",
			Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, .025, .1, .5, 2.5, 10},
		}),
		e2e: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "decryptd_end_to_end_latency_seconds",
			Help:    "From the device's timestamp to every sink holding the record (device clocks and offline buffering included; a timestamp in seconds limits resolution to 1 s).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400},
		}),
		sinkWrite: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "decryptd_sink_write_duration_seconds",
			Help:    "Duration of one sink Write call (one batch), or of one group of batches made durable with one Sync, failed ones included.",
			Buckets: []float64{1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"sink"}),
		sinkBatch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "decryptd_sink_batch_records",
			Help:    "Records per sink Write call, or per group of batches made durable with one Sync.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024},
		}, []string{"sink"}),
		sinkErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_sink_errors_total",
			Help: "Failed sink Write calls, by sink; the batch is retried.",
		}, []string{"sink"}),
		sinkUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "decryptd_sink_up",
			Help: "1 when the sink's last Write succeeded (or none was needed yet), 0 while it fails.",
		}, []string{"sink"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "decryptd_transient_retries_total",
			Help: "Retries after a transient fault, by cause: kms (a key could not be resolved for now), sink (a Write failed).",
		}, []string{"cause"}),
		deadLetterSet: map[string]bool{},
	}
	m.processedDelivered = m.processed.WithLabelValues(OutcomeDelivered)
	m.processedDeadLettered = m.processed.WithLabelValues(OutcomeDeadLettered)
	m.processedDuplicate = m.processed.WithLabelValues(OutcomeDuplicate)
	for _, r := range decrypt.Reasons() {
		m.failures.WithLabelValues(r)
	}
	for _, r := range deadLetterReasons() {
		m.deadLetters.WithLabelValues(r)
		m.deadLetterSet[r] = true
	}
	for _, s := range sinkNames {
		m.delivered.WithLabelValues(s)
		m.sinkErrors.WithLabelValues(s)
		m.sinkUp.WithLabelValues(s).Set(1)
		m.sinkWrite.WithLabelValues(s)
		m.sinkBatch.WithLabelValues(s)
	}
	for _, c := range DuplicateCauses() {
		m.duplicates.WithLabelValues(c)
	}
	for _, c := range []string{causeKMS, causeSink} {
		m.retries.WithLabelValues(c)
	}
	if reg != nil {
		var errs []error
		for _, c := range []prometheus.Collector{
			m.processed, m.delivered, m.failures, m.duplicates, m.deadLetters, m.decryptDur,
			m.e2e, m.sinkWrite, m.sinkBatch, m.sinkErrors, m.sinkUp, m.retries,
		} {
			if err := reg.Register(c); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("pipeline: register metrics: %w", err)
		}
	}
	return m, nil
}

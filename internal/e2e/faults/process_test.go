package faults_test

import (
	"bytes"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/fleet"
	"github.com/decryptd/decryptd/internal/testutil/mosquittotest"
)

// countLines counts the newlines of a file sink's files, the rotated ones
// included (cheap enough to poll).
func countLines(path string) int {
	n := 0
	for _, p := range sinkFiles(path) {
		data, err := os.ReadFile(p)
		if err == nil {
			n += bytes.Count(data, []byte{'\n'})
		}
	}
	return n
}

// resumed waits until the sink has more lines than base and returns how
// long that took from since (the end of the fault).
func resumed(t *testing.T, path string, base int, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	waitUntil(t, limit, "delivery resumes after the fault", func() (bool, string) {
		n := countLines(path)
		return n > base, fmt.Sprintf("%d sink lines, %d at the fault's end", n, base)
	})
	return time.Since(since)
}

// settle waits until every good message sent is in the sink, or (after
// limit) until decryptd holds nothing (in flight 0) and the sink stops
// growing; it returns the missing ids and the last scrape.
func settle(t *testing.T, s *sender, p *proc, limit time.Duration) (result, []string, metrics) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var r result
	var miss []string
	for {
		r, miss = accountQuiet(s, p.files)
		if len(miss) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	var m metrics
	waitUntil(t, 30*time.Second, "decryptd holds nothing in flight", func() (bool, string) {
		var err error
		if m, err = scrape(p.addr); err != nil {
			return false, err.Error()
		}
		n := m.Sum("decryptd_inflight_messages")
		return n == 0, fmt.Sprintf("decryptd_inflight_messages %v", n)
	})
	s.e.plantReadings(p.files.Records)
	r, miss = account(t, s, []string{p.files.Records}, []string{p.files.DeadLetter})
	if len(miss) > 0 {
		sr := readSink(p.files.Records)
		fi, _ := os.Stat(p.files.Records)
		var size int64
		if fi != nil {
			size = fi.Size()
		}
		t.Logf("sink file: %d records, %d lines that are not a record, %d lines, %d bytes", len(sr.ids), sr.torn, countLines(p.files.Records), size)
		t.Logf("%d sent records not in the sink after %s; decryptd: received %v, released %v, processed %v (delivered %v, duplicate %v), in flight %v, unacked %v, sink up %v, exited %v",
			len(miss), limit, m.Sum("decryptd_mqtt_messages_received_total"), m.Sum("decryptd_mqtt_messages_released_total"),
			m.Sum("decryptd_messages_processed_total"), m.Sum("decryptd_messages_processed_total", "outcome", "delivered"),
			m.Sum("decryptd_messages_processed_total", "outcome", "duplicate"), m.Sum("decryptd_inflight_messages"),
			m.Sum("decryptd_mqtt_unacked_messages"), m.Sum("decryptd_sink_up"), p.Exited())
	}
	return r, miss, m
}

// accountQuiet is account without the checks (for polling).
func accountQuiet(s *sender, df daemonFiles) (result, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	have := map[string]bool{}
	for _, id := range readSink(df.Records).ids {
		have[id] = true
	}
	var miss []string
	for id := range s.good {
		if !have[id] {
			miss = append(miss, id)
		}
	}
	return result{Delivered: len(s.good) - len(miss)}, miss
}

// streamScenario is the common shape of broker kill, daemon kill and
// SIGTERM: a stream at a steady rate, a fault once part of it is in the
// sink, the fault's end, recovery, and the books.
type streamScenario struct {
	name      string
	devices   int
	count     int
	rate      float64
	faultAt   float64 // share of count in the sink when the fault starts
	inject    func(t *testing.T, e *env, p *proc) (fault func() *proc)
	bound     time.Duration
	brokerOK  bool // a lost-at-broker count is possible (broker SIGKILL)
	badShares float64
	notShared bool
}

func runStream(t *testing.T, sc streamScenario) {
	e := newEnv(t, envOptions{devices: sc.devices})
	df := e.writeConfig(daemonConfig{ClientID: "d1", NotShared: sc.notShared})
	var peak atomic.Int64
	p := e.startDaemon(df, &peak)
	mix := fleet.DefaultMix()
	if sc.badShares > 0 {
		mix.Bad = map[fleet.Kind]float64{fleet.Tampered: sc.badShares, fleet.Malformed: sc.badShares}
	}
	s := newSender(t, e, 4, mix)
	done := s.stream(allDevices(sc.devices), sc.count, sc.rate)
	waitUntil(t, 2*time.Minute, "part of the stream in the sink", func() (bool, string) {
		n := countLines(df.Records)
		return n >= int(float64(sc.count)*sc.faultAt), fmt.Sprintf("%d lines", n)
	})
	// Recovery is timed from the fault itself (the kill, the signal) to
	// the first record written after it is over (the broker or the daemon
	// back).
	faultAt := time.Now()
	np := sc.inject(t, e, p)()
	if np != nil {
		p = np
	}
	base := countLines(df.Records)
	rec := resumed(t, df.Records, base, faultAt, 2*time.Minute)
	waitStream(t, done, 3*time.Minute)
	s.flush(t)
	limit := pick(60*time.Second, 90*time.Second)
	if sc.brokerOK {
		limit = 20 * time.Second // what a dead broker lost does not come back
	}
	r, miss, m := settle(t, s, p, limit)
	r.Fault, r.Recover, r.RecoverBound, r.PeakRSS, r.Budget = sc.name, rec, sc.bound, peak.Load(), df.budget
	if len(miss) > 0 {
		received := m.Sum("decryptd_mqtt_messages_received_total") - m.Sum("decryptd_mqtt_messages_released_total")
		processed := m.Sum("decryptd_messages_processed_total")
		t.Logf("%d sent records missing; decryptd: received %v (less released), processed %v, in flight %v",
			len(miss), received, processed, m.Sum("decryptd_inflight_messages"))
		t.Logf("decryptd log:\n%s", mosquittotest.Tail(df.Log, 6<<10))
		t.Logf("mosquitto log:\n%s", mosquittotest.Tail(e.broker.LogFile, 12<<10))
		// When did the broker acknowledge the missing messages: before
		// the fault (held by the broker when it died), or after it (taken
		// by a restarted broker that had no subscriber for them yet)?
		s.mu.Lock()
		var beforeFault, afterFault int
		for _, id := range miss {
			if s.firstAck[id].Before(faultAt) {
				beforeFault++
			} else {
				afterFault++
			}
		}
		s.mu.Unlock()
		t.Logf("missing: %d acknowledged by the broker before the fault, %d after it", beforeFault, afterFault)
		if sc.brokerOK {
			r.Note = fmt.Sprintf("of those lost at the broker, %d acknowledged before the kill, %d after the restart", beforeFault, afterFault)
		}
		if sc.brokerOK && received == processed {
			// decryptd finished with everything it received: the missing
			// messages never reached it.
			r.LostBroker = len(miss)
		} else {
			r.Lost = len(miss)
		}
	}
	// account fails on any dead letter that is not a bad message with its
	// expected reason: a transient cause (broker, daemon restart) could
	// only dead-letter good ones.
	bookkeep(t, r)
	if p.Exited() {
		t.Errorf("decryptd exited: %v", p.Err())
	}
}

// Mosquitto SIGKILLed mid-stream and restarted on its persistence file:
// decryptd reconnects and loses nothing it received; what the broker
// acknowledged to devices and then lost is counted apart (lost at broker),
// split by when it was acknowledged. Twice: decryptd on a shared
// subscription ($share/decryptd/..., the default for replicas) and on a
// plain one.
func TestBrokerSIGKILL(t *testing.T) {
	t.Parallel()
	for _, notShared := range []bool{false, true} {
		name, label := "shared", "shared subscription"
		if notShared {
			name, label = "plain", "plain subscription"
		}
		t.Run(name, func(t *testing.T) {
			runStream(t, streamScenario{
				name: "broker SIGKILL + restart, " + label, devices: 40,
				count: pick(3000, 20000), rate: pick(300.0, 1000.0), faultAt: 0.3,
				bound: pick(30*time.Second, 15*time.Second), brokerOK: true, notShared: notShared,
				inject: func(t *testing.T, e *env, p *proc) func() *proc {
					return func() *proc {
						e.broker.Kill()
						time.Sleep(time.Second)
						e.broker.Restart()
						return nil
					}
				},
			})
		})
	}
}

func TestDaemonSIGKILL(t *testing.T) {
	t.Parallel()
	runStream(t, streamScenario{
		name: "decryptd SIGKILL + restart", devices: 40,
		count: pick(3000, 20000), rate: pick(300.0, 1000.0), faultAt: 0.3,
		bound: pick(45*time.Second, 10*time.Second),
		inject: func(t *testing.T, e *env, p *proc) func() *proc {
			return func() *proc {
				p.kill()
				time.Sleep(time.Second)
				return e.startDaemon(p.files, p.peaks)
			}
		},
	})
}

func TestSIGTERMMidStream(t *testing.T) {
	t.Parallel()
	runStream(t, streamScenario{
		name: "decryptd SIGTERM mid-stream + restart", devices: 40,
		count: pick(3000, 20000), rate: pick(300.0, 1000.0), faultAt: 0.3,
		bound: pick(45*time.Second, 10*time.Second),
		inject: func(t *testing.T, e *env, p *proc) func() *proc {
			return func() *proc {
				if err := p.terminate(30 * time.Second); err != nil {
					t.Errorf("SIGTERM: exit %v, want a clean exit", err)
				}
				return e.startDaemon(p.files, p.peaks)
			}
		},
	})
}

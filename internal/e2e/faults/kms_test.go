package faults_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/decryptd/decryptd/internal/fleet"
)

// spoolYAML is the durable key-pending spool's section, once the
// configuration has one (the spool helper's `spool:` section): without it
// messages waiting for a key hold in-flight slots, and a KMS outage stalls
// every device.
func spoolYAML(dir string) string {
	if !configHas("Spool") {
		return ""
	}
	return fmt.Sprintf("spool:\n  dir: %q\n  max_bytes: 268435456\n", dir)
}

// A KMS outage (kpemu through the real keyprotect-go-client: hung,
// refusing connections, or answering 503) with half the devices' keys
// cached: the cached devices keep their delivery rate (at least 90% of the
// rate before), the others are delivered once the KMS is back (within 5 s
// in the long form), nothing lost, nothing dead-lettered; also when the
// daemon is SIGKILLed during the outage (then the rate is not asserted: a
// restarted daemon starts with an empty cache).
func TestKMSOutage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		fault string
		kill  bool
	}{{"hang", false}, {"refuse", false}, {"503", false}, {"hang", true}} {
		name := "kms-" + tc.fault
		if tc.kill {
			name += "+SIGKILL"
		}
		t.Run(name, func(t *testing.T) { kmsOutage(t, tc.fault, tc.kill) })
	}
}

func kmsOutage(t *testing.T, fault string, kill bool) {
	const devices = 40
	var (
		outage = pick(8*time.Second, 30*time.Second)
		rate   = pick(80.0, 200.0) // messages per second from the cached half
		pre    = pick(4*time.Second, 10*time.Second)
		post   = pick(4*time.Second, 10*time.Second)
		perDev = 15 // messages of each uncached device sent in the outage
		bound  = pick(30*time.Second, 5*time.Second)
	)
	e := newEnv(t, envOptions{devices: devices, keyProtect: true, maxInflight: 100})
	df := e.writeConfig(daemonConfig{ClientID: "k1", MaxInFlight: 100, Extra: spoolYAML(filepath.Join(e.dir, "spool"))})
	var peak atomic.Int64
	p := e.startDaemon(df, &peak)
	s := newSender(t, e, 4, fleet.DefaultMix())
	var cached, uncached []int
	for i := range devices {
		if i%2 == 0 {
			cached = append(cached, i)
		} else {
			uncached = append(uncached, i)
		}
	}
	cachedSet := map[string]bool{}
	for _, i := range cached {
		cachedSet[e.fleet.Device(i).ID] = true
	}
	// Warm the cache: one message of each cached device, all delivered.
	waitStream(t, s.stream(cached, len(cached), 0), time.Minute)
	waitUntil(t, time.Minute, "the cached half's first messages delivered", func() (bool, string) {
		n := countLines(df.Records)
		return n >= len(cached), fmt.Sprintf("%d of %d", n, len(cached))
	})

	cachedDelivered := func() int {
		n := 0
		sr := readSink(df.Records)
		for _, id := range sr.ids {
			if cachedSet[sr.device[id]] {
				n++
			}
		}
		return n
	}
	total := int(rate * (pre + outage + post).Seconds())
	steady := s.stream(cached, total, rate)
	time.Sleep(pre / 2)
	c0, t0 := cachedDelivered(), time.Now()
	time.Sleep(pre / 2)
	c1, t1 := cachedDelivered(), time.Now()

	e.kp.fault(t, fault)
	downAt := time.Now()
	// The uncached half speaks during the outage: more messages than
	// mqtt.max_in_flight, all waiting for keys.
	burst := s.stream(uncached, perDev*len(uncached), 0)
	if kill {
		time.Sleep(outage / 2)
		p.kill()
		p = e.launch(df, &peak)
	}
	time.Sleep(time.Until(downAt.Add(outage)))
	c2, t2 := cachedDelivered(), time.Now()
	e.kp.fault(t, "none")
	upAt := time.Now()
	before := float64(c1-c0) / t1.Sub(t0).Seconds()
	during := float64(c2-c1) / t2.Sub(t1).Seconds()
	t.Logf("cached devices: %.1f records/s before the outage, %.1f during (%d in %s); stream %.0f/s", before, during, c2-c1, t2.Sub(t1).Round(time.Millisecond), rate)
	note := fmt.Sprintf("cached %.0f/s before, %.0f/s during", before, during)
	if kill {
		note = "daemon SIGKILLed mid-outage"
	} else if during < 0.9*before {
		t.Errorf("cached devices' delivery rate fell to %.1f/s during the outage, below 90%% of %.1f/s before", during, before)
	}
	// The uncached half: every message delivered, timed from the KMS's
	// return (polled from now on, while the steady stream goes on).
	waitStream(t, burst, time.Minute)
	uncachedSet := map[string]bool{}
	for _, i := range uncached {
		uncachedSet[e.fleet.Device(i).ID] = true
	}
	recCh := make(chan time.Duration, 1)
	var lastLeft, lastSent atomic.Int64
	go func() {
		deadline := upAt.Add(90 * time.Second)
		for time.Now().Before(deadline) {
			have := map[string]bool{}
			for _, id := range readSink(df.Records).ids {
				have[id] = true
			}
			s.mu.Lock()
			left, sent := 0, 0
			for id, dev := range s.good {
				if uncachedSet[dev] {
					sent++
					if !have[id] {
						left++
					}
				}
			}
			s.mu.Unlock()
			lastLeft.Store(int64(left))
			lastSent.Store(int64(sent))
			if left == 0 && sent >= perDev*len(uncached) {
				recCh <- time.Since(upAt)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		recCh <- -1
	}()
	waitStream(t, steady, 2*time.Minute)
	s.flush(t)
	if kill {
		e.waitReady(p, 2*time.Minute)
	}
	rec := <-recCh
	if rec < 0 {
		m, _ := scrape(p.addr)
		t.Fatalf("the uncached devices' messages were not all delivered within 90s of the KMS's return: %d of %d sent missing; decryptd received %v, released %v, processed %v, in flight %v, exited %v",
			lastLeft.Load(), lastSent.Load(), m.Sum("decryptd_mqtt_messages_received_total"), m.Sum("decryptd_mqtt_messages_released_total"),
			m.Sum("decryptd_messages_processed_total"), m.Sum("decryptd_inflight_messages"), p.Exited())
	}
	r, miss, m := settle(t, s, p, 30*time.Second)
	r.Lost = len(miss)
	r.Fault = "KMS " + fault
	if kill {
		r.Fault += " + decryptd SIGKILL"
	}
	r.Fault += fmt.Sprintf(" %s, half cached", outage)
	r.Recover, r.RecoverBound, r.PeakRSS, r.Budget, r.Note = rec, bound, peak.Load(), df.budget, note
	t.Logf("metrics: transient retries %v, KMS errors in dead letters %v", m.Sum("decryptd_transient_retries_total"), m.Sum("decryptd_dead_letters_total"))
	bookkeep(t, r)
}

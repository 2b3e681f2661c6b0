package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/decryptd/decryptd/internal/fileperm"
	"github.com/decryptd/decryptd/internal/intake"
)

// tempDir is a directory for a spool to create (0700).
func tempDir(t *testing.T) string { return filepath.Join(t.TempDir(), "spool") }

func msg(dev string, i int) intake.Message {
	return intake.Message{
		Source: "mqtt", Topic: "devices/" + dev + "/telemetry", DeviceID: dev,
		Payload: []byte(fmt.Sprintf(`{"device_id":%q,"n":%d}`, dev, i)), Redelivered: i%3 == 0,
		ReceivedAt: time.Unix(1700000000, int64(i)),
	}
}

func open(t *testing.T, dir string, mod func(*Options)) *Spool {
	t.Helper()
	o := Options{Dir: dir, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
	if mod != nil {
		mod(&o)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// appendAll appends and waits for every fsync.
func appendAll(t *testing.T, s *Spool, ms ...intake.Message) {
	t.Helper()
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		ok, err := s.Append(m, false, func(err error) {
			if err != nil {
				t.Errorf("durable: %v", err)
			}
			wg.Done()
		})
		if !ok || err != nil {
			t.Fatalf("Append: %v %v", ok, err)
		}
	}
	wg.Wait()
}

// collector is a Handler that keeps what it is handed, in order.
type collector struct {
	mu   sync.Mutex
	got  []intake.Message
	deny func(intake.Message) bool // key still unresolvable
	all  chan struct{}
	want int
	fail bool // done with an error (shutdown)
}

func (c *collector) handle(_ context.Context, m intake.Message, done func(string, error)) bool {
	if c.deny != nil && c.deny(m) {
		return false
	}
	c.mu.Lock()
	c.got = append(c.got, m)
	n := len(c.got)
	c.mu.Unlock()
	if c.fail {
		done(OutcomeFailed, errors.New("shutdown"))
	} else {
		done(OutcomeDelivered, nil)
	}
	if n == c.want {
		close(c.all)
	}
	return true
}

func run(t *testing.T, s *Spool, c *collector) (stop func()) {
	t.Helper()
	c.all = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx, c.handle); close(done) }()
	return func() { cancel(); <-done }
}

func waitAll(t *testing.T, c *collector) {
	t.Helper()
	select {
	case <-c.all:
	case <-time.After(20 * time.Second):
		c.mu.Lock()
		defer c.mu.Unlock()
		t.Fatalf("replay handed over %d of %d messages", len(c.got), c.want)
	}
}

// checkFIFO: each device's messages in their append order, all there.
func checkFIFO(t *testing.T, got []intake.Message, devs []string, per int) {
	t.Helper()
	byDev := map[string][]intake.Message{}
	for _, m := range got {
		byDev[m.DeviceID] = append(byDev[m.DeviceID], m)
	}
	for _, d := range devs {
		ms := byDev[d]
		if len(ms) != per {
			t.Fatalf("device %s: %d messages, want %d", d, len(ms), per)
		}
		for i, m := range ms {
			w := msg(d, i)
			if !bytes.Equal(m.Payload, w.Payload) || m.Topic != w.Topic || m.Source != w.Source ||
				m.Redelivered != w.Redelivered || !m.ReceivedAt.Equal(w.ReceivedAt) {
				t.Fatalf("device %s message %d: got %+v, want %+v", d, i, m, w)
			}
		}
	}
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != "LOCK" {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func TestAppendReplayPerDeviceFIFOAndDeletion(t *testing.T) {
	dir := tempDir(t)
	s := open(t, dir, func(o *Options) { o.SegmentBytes = 2048 })
	devs := []string{"a", "b", "c"}
	var ms []intake.Message
	for i := 0; i < 40; i++ {
		for _, d := range devs {
			ms = append(ms, msg(d, i))
		}
	}
	appendAll(t, s, ms...)
	st := s.Stats()
	if st.Messages != 120 || st.Devices != 3 || st.Segments < 3 {
		t.Fatalf("stats %+v: want 120 messages, 3 devices, several segments", st)
	}
	for _, p := range []string{dir} {
		fi, _ := os.Stat(p)
		if fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s mode %v", p, fi.Mode())
		}
	}
	for _, f := range segFiles(t, dir) {
		fi, _ := os.Stat(filepath.Join(dir, f))
		if err := fileperm.Private(f, fi.Mode()); err != nil {
			t.Fatal(err)
		}
	}
	if !s.Pending("a") || s.Pending("zz") {
		t.Fatal("Pending wrong")
	}
	if got, want := s.oldest(), time.Unix(1700000000, 0).UnixNano(); got != want {
		t.Fatalf("oldest %d, want %d", got, want)
	}
	c := &collector{want: 120}
	stop := run(t, s, c)
	waitAll(t, c)
	stop()
	checkFIFO(t, c.got, devs, 40)
	if st := s.Stats(); st.Messages != 0 || st.Segments != 0 || st.Bytes != 0 || st.Devices != 0 {
		t.Fatalf("drained spool: %+v", st)
	}
	if f := segFiles(t, dir); len(f) != 0 {
		t.Fatalf("segment files left after draining: %v", f)
	}
	if s.Pending("a") {
		t.Fatal("drained device still pending")
	}
	if got := s.oldest(); got != 0 {
		t.Fatalf("oldest of an empty spool: %d", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestReopenReplaysWhatWasNotAcknowledged(t *testing.T) {
	dir := tempDir(t)
	s := open(t, dir, func(o *Options) { o.SegmentBytes = 1 << 20 })
	var ms []intake.Message
	for i := 0; i < 10; i++ {
		ms = append(ms, msg("a", i), msg("b", i))
	}
	appendAll(t, s, ms...)
	// Acknowledge device a's first 4 only; b's handler keeps failing.
	c := &collector{want: 4}
	c.deny = func(m intake.Message) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return m.DeviceID == "b" || len(c.got) >= 4
	}
	stop := run(t, s, c)
	waitAll(t, c)
	stop()
	if err := s.Close(); err != nil { // a crash: nothing drained further
		t.Fatal(err)
	}
	s = open(t, dir, nil)
	if st := s.Stats(); st.Messages != 16 {
		t.Fatalf("after reopen: %+v, want 16 messages", st)
	}
	c2 := &collector{want: 16}
	stop = run(t, s, c2)
	waitAll(t, c2)
	stop()
	var a, b []intake.Message
	for _, m := range c2.got {
		if m.DeviceID == "a" {
			a = append(a, m)
		} else {
			b = append(b, m)
		}
	}
	if len(a) != 6 || !bytes.Equal(a[0].Payload, msg("a", 4).Payload) || !bytes.Equal(a[5].Payload, msg("a", 9).Payload) {
		t.Fatalf("device a after reopen: %d messages (want 6: 4..9)", len(a))
	}
	checkFIFO(t, b, []string{"b"}, 10)
	s.Close()
	if f := segFiles(t, dir); len(f) != 0 {
		t.Fatalf("files left: %v", f)
	}
}

func TestHandedOverButFailedStaysForNextStart(t *testing.T) {
	dir := tempDir(t)
	s := open(t, dir, nil)
	appendAll(t, s, msg("a", 0), msg("a", 1))
	c := &collector{want: 2, fail: true}
	stop := run(t, s, c)
	waitAll(t, c)
	stop()
	s.Close()
	s = open(t, dir, nil)
	defer s.Close()
	if st := s.Stats(); st.Messages != 2 {
		t.Fatalf("failed deliveries not kept: %+v", st)
	}
}

func TestTornTailTruncated(t *testing.T) {
	for _, tc := range []struct {
		name string
		tear func(b []byte) []byte
		want int64
	}{
		{"cut in body", func(b []byte) []byte { return b[:len(b)-3] }, 2},
		{"cut in header", func(b []byte) []byte { return append(b, 1, 2, 3) }, 3},
		{"flipped bit", func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, 2},
		{"zero tail", func(b []byte) []byte { return append(b, make([]byte, 64)...) }, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tempDir(t)
			s := open(t, dir, nil)
			appendAll(t, s, msg("a", 0), msg("a", 1), msg("a", 2))
			s.Close()
			f := filepath.Join(dir, segFiles(t, dir)[0])
			b, _ := os.ReadFile(f)
			if err := os.WriteFile(f, tc.tear(b), 0o600); err != nil {
				t.Fatal(err)
			}
			s = open(t, dir, nil)
			if got := s.Stats().Messages; got != tc.want {
				t.Fatalf("%d messages after reopen, want %d", got, tc.want)
			}
			if n := testutil.ToFloat64(s.m.torn); n != 1 {
				t.Fatalf("torn counter %v", n)
			}
			// Appends after the truncation are read back whole.
			appendAll(t, s, msg("a", 3))
			s.Close()
			s = open(t, dir, nil)
			defer s.Close()
			if got := s.Stats().Messages; got != tc.want+1 {
				t.Fatalf("%d messages after the second reopen, want %d", got, tc.want+1)
			}
			if n := testutil.ToFloat64(s.m.torn); n != 0 {
				t.Fatalf("torn again after truncation: %v", n)
			}
		})
	}
}

func TestBoundInBytes(t *testing.T) {
	dir := tempDir(t)
	m := msg("a", 0)
	per := int64(recordLen(m))
	s := open(t, dir, func(o *Options) { o.MaxBytes = int64(len(segMagic)) + 3*per; o.SegmentBytes = 1 << 20 })
	appendAll(t, s, msg("a", 1), msg("a", 2), msg("a", 3))
	if ok, err := s.Append(msg("b", 4), false, nil); ok || !errors.Is(err, ErrFull) {
		t.Fatalf("append past the bound: %v %v, want ErrFull", ok, err)
	}
	if st := s.Stats(); st.Bytes > s.o.MaxBytes {
		t.Fatalf("%d bytes over the bound %d", st.Bytes, s.o.MaxBytes)
	}
	// Draining makes room again.
	c := &collector{want: 3}
	stop := run(t, s, c)
	waitAll(t, c)
	stop()
	appendAll(t, s, msg("b", 0))
	s.Close()
}

func TestIfPending(t *testing.T) {
	s := open(t, tempDir(t), nil)
	defer s.Close()
	if ok, err := s.Append(msg("a", 0), true, nil); ok || err != nil {
		t.Fatalf("ifPending on an empty spool: %v %v", ok, err)
	}
	appendAll(t, s, msg("a", 0))
	if ok, err := s.Append(msg("a", 1), true, nil); !ok || err != nil {
		t.Fatalf("ifPending behind a spooled message: %v %v", ok, err)
	}
	if ok, _ := s.Append(msg("b", 1), true, nil); ok {
		t.Fatal("ifPending appended a device with nothing spooled")
	}
}

func TestRetryBacksOffThenDelivers(t *testing.T) {
	s := open(t, tempDir(t), nil)
	defer s.Close()
	appendAll(t, s, msg("a", 0), msg("a", 1), msg("b", 0))
	var mu sync.Mutex
	tries := 0
	c := &collector{want: 3}
	c.deny = func(intake.Message) bool {
		mu.Lock()
		defer mu.Unlock()
		tries++
		return tries <= 5
	}
	stop := run(t, s, c)
	waitAll(t, c)
	stop()
	if n := testutil.ToFloat64(s.m.replayed.WithLabelValues(OutcomeRetry)); n != 5 {
		t.Fatalf("retries counted %v, want 5", n)
	}
	checkFIFO(t, c.got, []string{"a"}, 2)
}

func TestExposedFilesRefused(t *testing.T) {
	dir := tempDir(t)
	s := open(t, dir, nil)
	appendAll(t, s, msg("a", 0))
	s.Close()
	f := filepath.Join(dir, segFiles(t, dir)[0])
	if err := os.Chmod(f, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Dir: dir}); !errors.Is(err, fileperm.ErrExposed) {
		t.Fatalf("0644 segment: %v, want ErrExposed", err)
	}
	os.Chmod(f, 0o600)
	os.Chmod(dir, 0o755)
	if _, err := Open(Options{Dir: dir}); !errors.Is(err, fileperm.ErrExposed) {
		t.Fatalf("0755 directory: %v, want ErrExposed", err)
	}
}

func TestOneProcessPerDirectory(t *testing.T) {
	dir := tempDir(t)
	s := open(t, dir, nil)
	defer s.Close()
	old := lockWait
	lockWait = 50 * time.Millisecond
	defer func() { lockWait = old }()
	if _, err := Open(Options{Dir: dir}); err == nil {
		t.Fatal("a second Open of a directory in use succeeded")
	}
}

// kafkaMsg is msg as the Kafka input hands it on: with its record's
// position.
func kafkaMsg(dev string, i int) intake.Message {
	m := msg(dev, i)
	m.Source = "kafka"
	m.Position = intake.LogPosition{Topic: "device-events", Partition: int32(i % 5), Offset: int64(1<<40 + i)}
	return m
}

func TestRecordRoundTrip(t *testing.T) {
	odd := kafkaMsg("c", 2)
	odd.Position = intake.LogPosition{Topic: "t", Partition: -1, Offset: -1 << 62} // never seen from Kafka, kept anyway
	unmapped := kafkaMsg("d", 3)
	unmapped.Topic, unmapped.DeviceID = "", ""
	for _, m := range []intake.Message{msg("a", 0), msg("b", 1), {}, {Payload: make([]byte, 70000), Topic: "x"},
		kafkaMsg("a", 0), kafkaMsg("b", 7), odd, unmapped} {
		b := appendRecord(nil, m)
		if len(b) != recordLen(m) {
			t.Fatalf("recordLen %d, encoded %d", recordLen(m), len(b))
		}
		if v, want := b[recHeader], byte(bodyVersion1); m.Position.IsZero() && v != want || !m.Position.IsZero() && v != bodyVersion {
			t.Fatalf("%+v written as version %d", m, v)
		}
		got, err := decodeRecord(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Topic != m.Topic || got.DeviceID != m.DeviceID || !bytes.Equal(got.Payload, m.Payload) || !got.ReceivedAt.Equal(m.ReceivedAt) || got.Redelivered != m.Redelivered ||
			got.Source != m.Source || got.Position != m.Position {
			t.Fatalf("round trip: %+v != %+v", got, m)
		}
	}
}

// v1Record encodes m as a version 1 record, spelled out from the layout
// (what a spool written before version 2 holds).
func v1Record(m intake.Message) []byte {
	body := []byte{1, 0}
	if m.Redelivered {
		body[1] = 1
	}
	body = binary.LittleEndian.AppendUint64(body, uint64(m.ReceivedAt.UnixNano()))
	for _, f := range []string{m.Source, m.DeviceID, m.Topic, string(m.Payload)} {
		body = binary.AppendUvarint(body, uint64(len(f)))
		body = append(body, f...)
	}
	rec := binary.LittleEndian.AppendUint32(nil, uint32(len(body)))
	rec = binary.LittleEndian.AppendUint32(rec, crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
	return append(rec, body...)
}

// Version 1 records (a spool of before) still read; a message without a
// position is still written as one, byte for byte; a version 2 record
// differs from it only by its version byte and the position.
func TestRecordVersions(t *testing.T) {
	m := msg("a", 3)
	v1 := v1Record(m)
	if got := appendRecord(nil, m); !bytes.Equal(got, v1) {
		t.Fatalf("a message without position:\n got % x\nwant % x (version 1)", got, v1)
	}
	got, err := decodeRecord(v1)
	if err != nil {
		t.Fatalf("version 1 record: %v", err)
	}
	if got.Topic != m.Topic || got.DeviceID != m.DeviceID || got.Source != m.Source || !bytes.Equal(got.Payload, m.Payload) ||
		got.Redelivered != m.Redelivered || !got.ReceivedAt.Equal(m.ReceivedAt) || !got.Position.IsZero() {
		t.Fatalf("version 1 record read as %+v, want %+v", got, m)
	}
	k := kafkaMsg("a", 3)
	v2 := appendRecord(nil, k)
	if v2[recHeader] != 2 {
		t.Fatalf("version byte %d, want 2", v2[recHeader])
	}
	for _, bad := range []struct {
		name string
		mod  func(body []byte) []byte
		want string
	}{
		{"version 3", func(b []byte) []byte { b[0] = 3; return b }, "version 3"},
		{"version 2 without a position", func(b []byte) []byte {
			v := v1Record(k)[recHeader:]
			v[0] = 2
			return v
		}, "spool:"},
	} {
		body := bad.mod(append([]byte(nil), v2[recHeader:]...))
		rec := binary.LittleEndian.AppendUint32(nil, uint32(len(body)))
		rec = binary.LittleEndian.AppendUint32(rec, crc32.Checksum(body, castagnoli))
		if _, err := decodeRecord(append(rec, body...)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want an error with %q", bad.name, err, bad.want)
		}
	}
}

// Messages of the Kafka input keep their position through the spool, also
// across a restart, beside a segment's version 1 records.
func TestReopenKeepsPosition(t *testing.T) {
	dir := tempDir(t)
	s := open(t, dir, nil)
	ms := []intake.Message{msg("a", 0), kafkaMsg("b", 1), msg("a", 2), kafkaMsg("b", 3)}
	appendAll(t, s, ms...)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, nil)
	defer s.Close()
	c := &collector{want: len(ms)}
	stop := run(t, s, c)
	waitAll(t, c)
	stop()
	got := map[string]intake.Message{}
	for _, m := range c.got {
		got[string(m.Payload)] = m
	}
	for _, m := range ms {
		g, ok := got[string(m.Payload)]
		if !ok || g.Position != m.Position || g.Source != m.Source || g.Topic != m.Topic {
			t.Errorf("replayed %+v, appended %+v", g, m)
		}
	}
}

// TestReplayInFlightBound: while the sinks hold nothing (no done), the
// replay hands over at most MaxInFlight messages, and goes on as they are
// done.
func TestReplayInFlightBound(t *testing.T) {
	s := open(t, tempDir(t), func(o *Options) { o.MaxInFlight = 3 })
	defer s.Close()
	var ms []intake.Message
	for i := 0; i < 10; i++ {
		ms = append(ms, msg("a", i), msg("b", i))
	}
	appendAll(t, s, ms...)
	var mu sync.Mutex
	var dones []func(string, error)
	handed := 0
	h := func(_ context.Context, m intake.Message, done func(string, error)) bool {
		mu.Lock()
		defer mu.Unlock()
		handed++
		dones = append(dones, done)
		return true
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { s.Run(ctx, h); close(stopped) }()
	count := func() int { mu.Lock(); defer mu.Unlock(); return handed }
	for count() < 3 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := count(); n != 3 {
		t.Fatalf("%d handed over with no done, want MaxInFlight 3", n)
	}
	for {
		mu.Lock()
		ds := dones
		dones = nil
		mu.Unlock()
		for _, d := range ds {
			d(OutcomeDelivered, nil)
		}
		if s.Stats().Messages == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-stopped
	if n := count(); n != 20 {
		t.Fatalf("%d handed over, want 20", n)
	}
}

// BenchmarkAppend: appends from many goroutines, each waiting for its
// fsync, as the pipeline's topic workers do during an outage; group
// commit makes one fsync cover the appends made while the previous ran.
func BenchmarkAppend(b *testing.B) {
	s, err := Open(Options{Dir: filepath.Join(b.TempDir(), "spool"), MaxBytes: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	m := msg("device-0001", 1)
	m.Payload = make([]byte, 512)
	b.SetBytes(int64(recordLen(m)))
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		ch := make(chan error, 1)
		for pb.Next() {
			if _, err := s.Append(m, false, func(err error) { ch <- err }); err != nil {
				b.Error(err)
				return
			}
			if err := <-ch; err != nil {
				b.Error(err)
				return
			}
		}
	})
}

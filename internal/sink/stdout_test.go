package sink_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/sink"
	"github.com/decryptd/decryptd/internal/sink/sinktest"
)

func TestStdoutContract(t *testing.T) {
	t.Run("plain_writer", func(t *testing.T) {
		sinktest.Run(t, func(t *testing.T) sinktest.Subject {
			var buf bytes.Buffer
			s, err := sink.NewStdout(sink.StdoutOptions{Name: "stdout", Writer: &buf})
			if err != nil {
				t.Fatal(err)
			}
			return sinktest.Subject{Sink: s, Read: func(*testing.T) [][]byte { return splitLines(buf.Bytes()) }}
		})
	})
	// A buffering writer holds the batch after Write; Flush must push it on.
	t.Run("bufio_writer_flushes", func(t *testing.T) {
		var buf bytes.Buffer
		bw := bufio.NewWriterSize(&buf, 1<<20)
		s, err := sink.NewStdout(sink.StdoutOptions{Name: "stdout", Writer: bw})
		if err != nil {
			t.Fatal(err)
		}
		recs := sinktest.Records("bufio", 3)
		if err := s.Write(t.Context(), recs); err != nil {
			t.Fatal(err)
		}
		if buf.Len() != 0 {
			t.Fatal("test premise: bufio.Writer should still hold the batch")
		}
		if err := s.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got := len(splitLines(buf.Bytes())); got != 3 {
			t.Fatalf("after Flush: %d lines, want 3", got)
		}
	})
}

func TestStdoutPretty(t *testing.T) {
	tests := []struct {
		name string
		rec  sink.Record
		want string
	}{
		{"record", sink.Record{ID: "1", DeviceID: "sensor-001",
			JSON: []byte(`{"id":"1","device_id":"sensor-001","key_version":"v2","data":{"temperature":98.60}}`)},
			"sensor-001 key v2: {\"temperature\":98.60}\n"},
		{"device from json", sink.Record{ID: "2",
			JSON: []byte(`{"device_id":"d9","key_version":"v1","data":[1]}`)},
			"d9 key v1: [1]\n"},
		{"no data", sink.Record{ID: "3", JSON: []byte(`{"x":1}`)},
			"- key -: {\"x\":1}\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			s, err := sink.NewStdout(sink.StdoutOptions{Name: "demo", Writer: &buf, Format: sink.Pretty})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Write(t.Context(), []sink.Record{tc.rec}); err != nil {
				t.Fatal(err)
			}
			if buf.String() != tc.want {
				t.Fatalf("got %q, want %q", buf.String(), tc.want)
			}
		})
	}
	t.Run("not an object", func(t *testing.T) {
		var buf bytes.Buffer
		s, _ := sink.NewStdout(sink.StdoutOptions{Name: "demo", Writer: &buf, Format: sink.Pretty})
		err := s.Write(t.Context(), []sink.Record{{ID: "x", JSON: []byte(`"PHI-secret"`)}})
		if !errors.Is(err, sink.ErrBadRecord) || strings.Contains(err.Error(), "PHI-secret") {
			t.Fatalf("got %v, want ErrBadRecord without the record's text", err)
		}
		if buf.Len() != 0 {
			t.Fatalf("wrote %q for a refused batch", buf.String())
		}
	})
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestStdoutWriteError(t *testing.T) {
	s, _ := sink.NewStdout(sink.StdoutOptions{Name: "x", Writer: failWriter{}})
	if err := s.Write(t.Context(), sinktest.Records("e", 1)); err == nil || !strings.Contains(err.Error(), "broken pipe") {
		t.Fatalf("got %v", err)
	}
	_ = s.Close(context.Background())
}

func TestStdoutOptionsValidation(t *testing.T) {
	if _, err := sink.NewStdout(sink.StdoutOptions{Writer: &bytes.Buffer{}}); err == nil || !strings.Contains(err.Error(), "name:") {
		t.Fatalf("no name: %v", err)
	}
	if _, err := sink.NewStdout(sink.StdoutOptions{Name: "x"}); err == nil || !strings.Contains(err.Error(), "writer:") {
		t.Fatalf("no writer: %v", err)
	}
}

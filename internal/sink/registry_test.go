package sink_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/sink"
)

type countingSink struct {
	batches [][]string
	failAt  int // 1-based Write call that fails; 0: none
}

func (s *countingSink) Name() string { return "c" }
func (s *countingSink) Write(_ context.Context, b []sink.Record) error {
	var ids []string
	for _, r := range b {
		ids = append(ids, r.ID)
	}
	s.batches = append(s.batches, ids)
	if len(s.batches) == s.failAt {
		return errors.New("refused")
	}
	return nil
}
func (s *countingSink) Flush(context.Context) error { return nil }
func (s *countingSink) Close(context.Context) error { return nil }

func TestChunked(t *testing.T) {
	batch := make([]sink.Record, 5)
	for i := range batch {
		batch[i] = sink.Record{ID: string(rune('a' + i)), JSON: []byte("{}")}
	}
	c := &countingSink{}
	if err := sink.Chunked(c, 2).Write(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(flat(c.batches), "|"); got != "a,b|c,d|e" {
		t.Errorf("chunks %s, want a,b|c,d|e", got)
	}
	c = &countingSink{failAt: 2}
	if err := sink.Chunked(c, 2).Write(context.Background(), batch); err == nil || len(c.batches) != 2 {
		t.Errorf("a failed chunk must fail the Write at once: %v after %d chunks", err, len(c.batches))
	}
	c = &countingSink{}
	if s := sink.Chunked(c, 0); s != sink.Sink(c) {
		t.Error("max 0 must leave the sink as it is")
	}
}

func flat(bs [][]string) []string {
	var out []string
	for _, b := range bs {
		out = append(out, strings.Join(b, ","))
	}
	return out
}

func TestRegistry(t *testing.T) {
	r, err := sink.NewRegistry(sink.FileType(), sink.StdoutType(), sink.HTTPType())
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Describe(); got != "file, stdout or http" {
		t.Errorf("Describe %q", got)
	}
	if _, ok := r.Lookup("file"); !ok {
		t.Error("file not found")
	}
	if _, err := sink.NewRegistry(sink.FileType(), sink.FileType()); err == nil {
		t.Error("a type registered twice was accepted")
	}
	if _, err := sink.NewRegistry(sink.Type{Name: "x"}); err == nil {
		t.Error("a type without NewConfig was accepted")
	}
}

func TestTypeConfigs(t *testing.T) {
	for _, tc := range []struct {
		cfg  sink.Config
		want []string // problems, "key: text" prefixes
	}{
		{&sink.FileConfig{}, []string{"path: required for type file"}},
		{&sink.FileConfig{Path: "/x", MaxBytes: -1, Keep: -1}, []string{"max_bytes: must be positive", "keep: must be positive"}},
		{&sink.StdoutConfig{Format: "xml"}, []string{`format: must be json or pretty, got "xml"`}},
		{&sink.HTTPConfig{URL: "http://example.com/x"}, []string{"url: must be https (http only to a loopback host)", "batch_max", "batch_max_bytes", "timeout"}},
	} {
		got := sink.AsProblems(tc.cfg.Validate(sink.Env{}))
		if len(got) != len(tc.want) {
			t.Errorf("%T: problems %v, want %v", tc.cfg, got, tc.want)
			continue
		}
		for i, p := range got {
			if !strings.HasPrefix(p.Key+": "+p.Text, tc.want[i]) {
				t.Errorf("%T: problem %d %q, want %q", tc.cfg, i, p.Key+": "+p.Text, tc.want[i])
			}
		}
		tc.cfg.Defaults()
	}
	h := &sink.HTTPConfig{URL: "http://127.0.0.1:1/x"}
	h.Defaults()
	if err := h.Validate(sink.Env{}); err != nil || h.BatchMax != sink.DefaultHTTPBatchMax {
		t.Errorf("defaults: %v, batch_max %d", err, h.BatchMax)
	}
}

func TestChunkedBytes(t *testing.T) {
	rec := func(id string, n int) sink.Record {
		return sink.Record{ID: id, JSON: []byte(`"` + strings.Repeat("x", n-2) + `"`)}
	}
	// Each record is 10 bytes of JSON plus its '\n'.
	batch := []sink.Record{rec("a", 10), rec("b", 10), rec("c", 10), rec("d", 40), rec("e", 10), rec("f", 10)}
	c := &countingSink{}
	if err := sink.ChunkedBytes(c, 100, 25).Write(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	// 22 bytes fit under 25, a third record would not; d (41 bytes) is
	// larger than the bound and goes alone.
	if got := strings.Join(flat(c.batches), "|"); got != "a,b|c|d|e,f" {
		t.Errorf("chunks %s, want a,b|c|d|e,f", got)
	}
	c = &countingSink{}
	if err := sink.ChunkedBytes(c, 1, 1000).Write(context.Background(), batch[:3]); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(flat(c.batches), "|"); got != "a|b|c" {
		t.Errorf("chunks %s, want a|b|c (the record bound still holds)", got)
	}
	c = &countingSink{}
	if s := sink.ChunkedBytes(c, 0, 0); s != sink.Sink(c) {
		t.Error("no bounds must leave the sink as it is")
	}
}

package pipeline_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/decrypt"
	"github.com/decryptd/decryptd/internal/pipeline"
	"github.com/decryptd/decryptd/internal/sink"
)

// policySink is a fakeSink with its own record encoding (as a sink under a
// field policy would have): only the record id, or a refusal for ids
// starting with "secret".
type policySink struct{ *fakeSink }

func (policySink) AppendRecord(dst []byte, rec *decrypt.Record) ([]byte, error) {
	if strings.HasPrefix(rec.ID, "secret") {
		return dst, errors.New("policy refuses it")
	}
	return append(dst, `{"id":"`+rec.ID+`","data":"<dropped>"}`...), nil
}

var _ pipeline.RecordEncoder = policySink{}

// A sink that encodes records itself gets its own encoding; the others
// still get the standard JSON, and its refusal dead-letters the record as
// sink_rejected while the others hold it.
func TestRecordEncoderPerSink(t *testing.T) {
	pol := policySink{newSink("b")}
	e := newEnv(t, func(o *pipeline.Options) { o.Sinks = []sink.Sink{o.Sinks[0], pol} })
	process(t, e, msg("ok:r1"))
	process(t, e, msg("ok:secret2"))
	e.close()

	a, b := e.a.records(), pol.records()
	if len(a) != 2 || !strings.Contains(string(a[0].JSON), `"data":{"id":"r1"}`) {
		t.Fatalf("standard sink holds %d records, first %s", len(a), a[0].JSON)
	}
	if len(b) != 1 || string(b[0].JSON) != `{"id":"r1","data":"<dropped>"}` || b[0].ID != "r1" {
		t.Fatalf("encoding sink holds %v", b)
	}
	dl := e.dl.records()
	if len(dl) != 1 || !strings.Contains(string(dl[0].JSON), `"reason":"sink_rejected"`) {
		t.Fatalf("dead letters %v", dl)
	}
}

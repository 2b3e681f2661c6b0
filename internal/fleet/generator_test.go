package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/decrypt"
)

// TestGeneratorKinds opens every kind of message with the decryption core
// over the fleet's own keys and checks the reason it was meant to cause.
func TestGeneratorKinds(t *testing.T) {
	for _, groupSize := range []int{0, 4} {
		f := memFleet(t, 10, groupSize)
		for _, kind := range append([]Kind{Good}, BadKinds()...) {
			t.Run(string(kind)+map[bool]string{true: "/group", false: "/device"}[groupSize > 0], func(t *testing.T) {
				mix := Mix{ShapeB: 0.5}
				if kind != Good {
					mix.Bad = map[Kind]float64{kind: 1}
				}
				g, err := NewGenerator(f.Devices(), mix, 7, nil)
				if err != nil {
					t.Fatal(err)
				}
				d, err := decrypt.New(f, decrypt.Options{})
				if err != nil {
					t.Fatal(err)
				}
				ctx := context.Background()
				if kind == Replayed {
					// A replay needs an original, sent (and accepted) first.
					g0, _ := NewGenerator(f.Devices(), Mix{ShapeB: 0.5}, 7, nil)
					*g = *g0
					for i := 0; i < 5; i++ {
						m, err := g.Next(f.Device(i), 1700000000+int64(i))
						if err != nil {
							t.Fatal(err)
						}
						if _, err := d.Open(ctx, decrypt.Message{Topic: m.Topic, Payload: m.Payload}); err != nil {
							t.Fatalf("original: %v", err)
						}
					}
					g.mix.Bad = map[Kind]float64{Replayed: 1}
					g.kinds, g.cum = []Kind{Replayed}, []float64{1}
				}
				shapes := map[Shape]int{}
				for i := 0; i < 40; i++ {
					dev := f.Device(i % f.Len())
					m, err := g.Next(dev, 1700000100+int64(i))
					if err != nil {
						t.Fatal(err)
					}
					if m.Kind != kind {
						t.Fatalf("kind %s, want %s", m.Kind, kind)
					}
					shapes[m.Shape]++
					if kind != Malformed && !json.Valid(m.Payload) {
						t.Fatalf("%s message is not JSON: %s", kind, m.Payload)
					}
					if kind == Good && (len(m.Payload) < 200 || len(m.Payload) > 400) {
						t.Errorf("message of %d bytes, want about 300: %s", len(m.Payload), m.Payload)
					}
					rec, err := d.Open(ctx, decrypt.Message{Topic: m.Topic, Payload: m.Payload})
					if got := decrypt.Reason(err); got != kind.Reason() {
						t.Fatalf("%s message %s on %s: reason %q (%v), want %q", kind, m.Payload, m.Topic, got, err, kind.Reason())
					}
					if kind == Good {
						if rec.DeviceID != m.Device.ID || rec.Timestamp != m.Timestamp {
							t.Fatalf("record of %s@%d, want %s@%d", rec.DeviceID, rec.Timestamp, m.Device.ID, m.Timestamp)
						}
						data := string(rec.Data)
						for _, field := range []string{`"temperature":`, `"heart_rate":`, `"spo2":`, `"patient_id":"P-`} {
							if !strings.Contains(data, field) {
								t.Fatalf("record data %s lacks %s", data, field)
							}
						}
						if m.Shape == ShapeB && !strings.Contains(data, `"medical_record":"MRN-`) {
							t.Fatalf("shape B record data %s lacks medical_record", data)
						}
					}
				}
				if kind != Replayed && (shapes[ShapeA] == 0 || shapes[ShapeB] == 0) {
					t.Errorf("shapes %v: want both", shapes)
				}
			})
		}
	}
}

// TestGeneratorSeeded: a seed fixes the content choices, never the nonces.
func TestGeneratorSeeded(t *testing.T) {
	f := memFleet(t, 5, 0)
	mix := Mix{ShapeB: 0.3, Bad: map[Kind]float64{Tampered: 0.1, Malformed: 0.1, TopicMismatch: 0.1, UnknownVersion: 0.1, Replayed: 0.1}}
	run := func() (kinds []Kind, shapes []Shape, payloads [][]byte) {
		g, err := NewGenerator(f.Devices(), mix, 42, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 200; i++ {
			m, err := g.Next(f.Device(i%5), 1700000000)
			if err != nil {
				t.Fatal(err)
			}
			kinds, shapes, payloads = append(kinds, m.Kind), append(shapes, m.Shape), append(payloads, m.Payload)
		}
		return
	}
	k1, s1, p1 := run()
	k2, s2, p2 := run()
	same := 0
	for i := range k1 {
		if k1[i] != k2[i] || s1[i] != s2[i] {
			t.Fatalf("message %d: %s/%s then %s/%s with the same seed", i, k1[i], s1[i], k2[i], s2[i])
		}
		// (Half a shape B message may hold no sealed value.)
		if k1[i] != Malformed && bytes.Equal(p1[i], p2[i]) {
			same++
		}
	}
	if same > 0 {
		t.Errorf("%d payloads repeated across runs: nonces must not follow the seed", same)
	}
	counts := map[Kind]int{}
	for _, k := range k1 {
		counts[k]++
	}
	for _, k := range append([]Kind{Good}, BadKinds()...) {
		if counts[k] == 0 {
			t.Errorf("no %s message in 200 with share 0.1: %v", k, counts)
		}
	}
}

func TestParseBadMix(t *testing.T) {
	tests := []struct {
		in      string
		want    map[Kind]float64
		wantErr bool
	}{
		{"", map[Kind]float64{}, false},
		{"tampered=0.01", map[Kind]float64{Tampered: 0.01}, false},
		{"auth_failed=0.01, replay=0.02,unknown_key=0.03", map[Kind]float64{Tampered: 0.01, Replayed: 0.02, UnknownVersion: 0.03}, false},
		{"malformed=0.5,topic_mismatch=0.5", map[Kind]float64{Malformed: 0.5, TopicMismatch: 0.5}, false},
		{"malformed=0.6,topic_mismatch=0.6", nil, true},
		{"good=0.1", nil, true},
		{"stale=0.1", nil, true},
		{"tampered", nil, true},
		{"tampered=x", nil, true},
		{"tampered=-1", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseBadMix(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func FuzzParseBadMix(f *testing.F) {
	for _, s := range []string{"", "tampered=0.01", "replay=1", "a=b,c", "malformed=0.5,malformed=0.5", "topic_mismatch=NaN"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseBadMix(s)
		if err != nil {
			return
		}
		if err := (Mix{Bad: m}).Validate(); err != nil {
			t.Fatalf("ParseBadMix(%q) accepted a mix that does not validate: %v", s, err)
		}
	})
}

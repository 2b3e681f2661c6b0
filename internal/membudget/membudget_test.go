package membudget_test

import (
	"strings"
	"testing"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/membudget"
)

const base = `
mqtt:
  brokers: [ssl://127.0.0.1:8883]
  client_id: t
  topics: [iot-2/type/+/id/+/evt/+/fmt/+]
  max_in_flight: 1024
  max_in_flight_bytes: 33554432
kms: {provider: local, local: {root_key_file: /k/root.json}}
registry: {driver: file, path: /k/registry.json}
cache: {max_entries: 1000}
decrypt: {replay_window_entries: 10000}
sinks:
  - {name: out, type: file, path: /k/out.jsonl}
dead_letter: {type: file, path: /k/dl.jsonl}
audit: {path: /k/audit.log}
`

func parse(t *testing.T, y string) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(y), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const (
	kib = 1 << 10
	mib = 1 << 20
)

// kafkaInput edits the base configuration to input.type kafka, with
// keys added to its kafka section.
func kafkaInput(keys string) func(string) string {
	return func(s string) string {
		return "input: {type: kafka}\nkafka: {brokers: ['b:9093'], topics: [t], allow_plaintext: true" + keys + "}\n" + s[strings.Index(s, "kms:"):]
	}
}

func TestTerms(t *testing.T) {
	cases := []struct {
		name string
		edit func(string) string
		want membudget.Terms
	}{
		{"defaults: the byte budget binds", nil, membudget.Terms{
			Base:     64 * mib,
			InFlight: 32 * mib * 3,
			Reading:  6 * 256 * kib * 8,
			Batches:  2 * 4 * mib, // file sink and file dead letter, one copy of a 4 MiB batch each
			Cache:    1000 * 1536,
			Replay:   10000 * 64,
		}},
		{"the count binds", func(s string) string {
			return strings.Replace(s, "max_in_flight: 1024", "max_in_flight: 10", 1)
		}, membudget.Terms{
			Base: 64 * mib, InFlight: 10 * (256*kib + 2*kib) * 3, Reading: 6 * 256 * kib * 8, Batches: 8 * mib,
			Cache: 1000 * 1536, Replay: 10000 * 64,
		}},
		{"a field policy adds a copy; batches smaller than two messages count two", func(s string) string {
			s = strings.Replace(s, "  - {name: out, type: file, path: /k/out.jsonl}",
				"  - {name: out, type: file, path: /k/out.jsonl, policy: {rules: [{pointer: /data/x, action: drop}]}}\n  - {name: web, type: http, url: 'https://x/y'}", 1)
			return s + "batch: {max_bytes: 65536}\n"
		}, membudget.Terms{
			Base: 64 * mib, InFlight: 32 * mib * 4, Reading: 6 * 256 * kib * 8,
			Batches: 3 * 512 * kib, // file, http, dead letter: max(64 KiB, 2 x 256 KiB)
			Cache:   1000 * 1536, Replay: 10000 * 64,
		}},
		{"connections set: reading per connection", func(s string) string {
			return strings.Replace(s, "max_in_flight: 1024", "max_in_flight: 1024\n  connections: 2", 1)
		}, membudget.Terms{
			Base: 64 * mib, InFlight: 32 * mib * 3, Reading: 6 * 256 * kib * 2, Batches: 8 * mib,
			Cache: 1000 * 1536, Replay: 10000 * 64,
		}},
		{"kafka and postgres copy more", func(s string) string {
			return strings.Replace(s, "  - {name: out, type: file, path: /k/out.jsonl}",
				"  - {name: k, type: kafka, brokers: ['b:9093'], topic: t}\n  - {name: pg, type: postgres, dsn: 'postgres://u@db/x', table: records}", 1)
		}, membudget.Terms{
			Base: 64 * mib, InFlight: 32 * mib * 3, Reading: 6 * 256 * kib * 8,
			Batches: (3 + 2 + 1) * 4 * mib,
			Cache:   1000 * 1536, Replay: 10000 * 64,
		}},
		{"kafka input: its bounds and fetch responses, no MQTT reading", kafkaInput(""), membudget.Terms{
			// The defaults: 8,192 records, 64 MiB of values; 4 fetch
			// responses of 8 MiB (an eighth of the bound), 3 copies each,
			// for the group client and the rebuild's reader, and 8 MiB of
			// read-back values queued.
			Base: 64 * mib, InFlight: (64*mib + 8192*2*kib) * 3, Reading: 2*3*4*8*mib + 8*mib,
			Batches: 8 * mib, Cache: 1000 * 1536, Replay: 10000 * 64,
		}},
		{"kafka input: a small byte bound, small fetches", kafkaInput(", max_in_flight: 100, max_in_flight_bytes: 1048576"), membudget.Terms{
			Base: 64 * mib, InFlight: (1*mib + 100*2*kib) * 3, Reading: 2*3*4*128*kib + 128*kib,
			Batches: 8 * mib, Cache: 1000 * 1536, Replay: 10000 * 64,
		}},
		{"kafka input: the count binds", kafkaInput(", max_in_flight: 10"), membudget.Terms{
			Base: 64 * mib, InFlight: 10 * (256*kib + 2*kib) * 3, Reading: 2*3*4*8*mib + 8*mib,
			Batches: 8 * mib, Cache: 1000 * 1536, Replay: 10000 * 64,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			y := base
			if tc.edit != nil {
				y = tc.edit(y)
			}
			c := parse(t, y)
			got := membudget.Of(c)
			if got != tc.want {
				t.Fatalf("terms %+v\nwant  %+v", got, tc.want)
			}
			if membudget.Budget(c) != got.Total() {
				t.Fatal("Budget is not the sum of the terms")
			}
		})
	}
}

func TestLimits(t *testing.T) {
	c := parse(t, base)
	b := membudget.Budget(c)
	if g := membudget.GoMemLimitMiB(c); g*mib < b || (g-1)*mib >= b {
		t.Fatalf("GOMEMLIMIT %d MiB for a budget of %d B", g, b)
	}
	l := membudget.ContainerLimit(c)
	if float64(l) < 1.25*float64(b) || l%membudget.LimitStep != 0 || float64(l-membudget.LimitStep) >= 1.25*float64(b) {
		t.Fatalf("limit %d for a budget of %d B", l, b)
	}
}

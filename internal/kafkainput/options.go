package kafkainput

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/intake"
)

// ConcurrentFetches bounds the fetch responses the client holds at once,
// in flight or buffered (kgo.MaxConcurrentFetches): the input's read
// buffers do not grow with the cluster's brokers.
const ConcurrentFetches = 4

// FetchMaxBytes is the most one fetch response holds (kgo.FetchMaxBytes;
// a larger first record is still returned whole, as Kafka does) for an
// input whose in-flight byte bound is maxInFlightBytes: an eighth of it,
// between 64 KiB and 8 MiB, so the ConcurrentFetches responses together
// hold at most half the bound. Records are copied out of the responses
// as they are polled.
func FetchMaxBytes(maxInFlightBytes int) int32 {
	return int32(max(min(maxInFlightBytes/8, 8<<20), 64<<10))
}

// fetchOpts are the fetch options of the group client and of the replay
// rebuild's reader: committed records only, and what a client holds beside
// the records in flight bounded: at most ConcurrentFetches fetch responses
// (in flight or buffered while polling waits), each at most FetchMaxBytes;
// membudget counts them. Without the cap it is one per broker, however
// many the cluster has.
func fetchOpts(maxInFlightBytes int) []kgo.Opt {
	fetch := FetchMaxBytes(maxInFlightBytes)
	return []kgo.Opt{
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.MaxConcurrentFetches(ConcurrentFetches),
		kgo.FetchMaxBytes(fetch),
		kgo.FetchMaxPartitionBytes(min(fetch, 1<<20)),
	}
}

// Defaults applied by New to zero-valued Options fields.
const (
	DefaultGroup                = "decryptd"
	DefaultTopicHeader          = "mqtt_topic"
	DefaultMaxInFlight          = 8192 // config.DefaultKafkaMaxInFlight
	DefaultMaxInFlightBytes     = 64 << 20
	DefaultWorkers              = 256
	DefaultCommitInterval       = time.Second
	DefaultReplayLookback       = 100_000
	DefaultReplayMaxAge         = 24 * time.Hour
	DefaultReplayRebuildTimeout = 30 * time.Second
	DefaultReplayRebuildWorkers = 64
	DefaultRevokeTimeout        = 30 * time.Second
	DefaultShutdownTimeout      = 15 * time.Second
	DefaultSessionTimeout       = 45 * time.Second
	DefaultRebalanceTimeout     = 60 * time.Second
)

// Window is the replay window the input rebuilds when it is assigned a
// partition (the daemon adapts decrypt.Decryptor.Remember). Remember
// authenticates m and records it as accepted without delivering it. It
// returns nil when m is recorded or needs no recording (a repeat, a
// message that failed then too), and an error only when it should be
// retried (a key fault, an ended context).
//
// Remember is called from up to ReplayRebuildWorkers goroutines at once,
// each device's messages from one goroutine in offset order.
type Window interface {
	Remember(ctx context.Context, m intake.Message) error
}

// Options configure an Input.
type Options struct {
	// ClientOptions connect to the cluster: seed brokers, client id, TLS,
	// SASL (kafka.Conn.ClientOptions builds them from the configuration),
	// and anything a test adds. Group, topics, balancer, commits and the
	// callbacks are the input's own and must not be among them.
	ClientOptions []kgo.Opt
	// Group is the consumer group (default DefaultGroup).
	Group string
	// Topics are the Kafka topics consumed.
	Topics []string
	// TopicFrom, TopicHeader and TopicTemplate say where a record's MQTT
	// topic comes from (TopicFromHeader, the default, with TopicHeader,
	// default DefaultTopicHeader; or TopicFromKey with TopicTemplate, which
	// holds KeyPlaceholder once).
	TopicFrom     string
	TopicHeader   string
	TopicTemplate string
	// TopicPattern finds the device id in the MQTT topic
	// (intake.ParseTopicPattern), as the MQTT input does. Empty: no
	// message carries a device id.
	TopicPattern string
	// MaxInFlight and MaxInFlightBytes bound the records (and their value
	// bytes) handed to the Processor and not yet settled; fetching waits
	// while either is reached (the byte bound may be passed by one poll).
	MaxInFlight      int
	MaxInFlightBytes int
	// Workers is how many goroutines hand records to the Processor: each
	// takes the records of the topics (devices) its hash picks, in order,
	// so up to Workers topics are decrypted at once (and wait for a key at
	// once).
	Workers int
	// CommitInterval: how often each partition's done prefix is committed.
	CommitInterval time.Duration
	// Window, when set, is rebuilt for every newly assigned partition from
	// its log: up to ReplayLookback records before the committed offset,
	// none older than ReplayMaxAge, within ReplayRebuildTimeout.
	Window               Window
	ReplayLookback       int
	ReplayMaxAge         time.Duration
	ReplayRebuildTimeout time.Duration
	// ReplayRebuildWorkers is how many read-back records are remembered
	// at once (default DefaultReplayRebuildWorkers): each worker takes the
	// devices its hash picks, in offset order, so a device's key is loaded
	// by one worker once while up to ReplayRebuildWorkers devices wait for
	// the KMS at once. Bounded, as each cold key is a KMS round trip.
	ReplayRebuildWorkers int
	// SessionTimeout and RebalanceTimeout are the group's (defaults 45 s
	// and 60 s). RevokeTimeout and ReplayRebuildTimeout must fit in
	// RebalanceTimeout.
	SessionTimeout   time.Duration
	RebalanceTimeout time.Duration
	// RevokeTimeout bounds how long a revocation waits for the partition's
	// in-flight messages before committing what is done and releasing it
	// (keep it below the group's rebalance timeout, 60 s by default).
	RevokeTimeout time.Duration
	// ShutdownTimeout bounds the shutdown Run performs when its context
	// ends.
	ShutdownTimeout time.Duration

	Logger     *zap.Logger           // nil: no logging
	Registerer prometheus.Registerer // nil: metrics kept, not registered
}

func (o Options) withDefaults() (Options, error) {
	var errs []error
	if o.Group == "" {
		o.Group = DefaultGroup
	}
	if len(o.Topics) == 0 {
		errs = append(errs, errors.New("Topics: at least one required"))
	}
	switch o.TopicFrom {
	case "", TopicFromHeader:
		o.TopicFrom = TopicFromHeader
		if o.TopicHeader == "" {
			o.TopicHeader = DefaultTopicHeader
		}
	case TopicFromKey:
		if strings.Count(o.TopicTemplate, KeyPlaceholder) != 1 {
			errs = append(errs, fmt.Errorf("TopicTemplate %q: want %s exactly once", o.TopicTemplate, KeyPlaceholder))
		}
	default:
		errs = append(errs, fmt.Errorf("TopicFrom %q: want %s or %s", o.TopicFrom, TopicFromHeader, TopicFromKey))
	}
	setI := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	setI(&o.MaxInFlight, DefaultMaxInFlight)
	setI(&o.MaxInFlightBytes, DefaultMaxInFlightBytes)
	setI(&o.Workers, DefaultWorkers)
	setI(&o.ReplayLookback, DefaultReplayLookback)
	setI(&o.ReplayRebuildWorkers, DefaultReplayRebuildWorkers)
	setD(&o.CommitInterval, DefaultCommitInterval)
	setD(&o.ReplayMaxAge, DefaultReplayMaxAge)
	setD(&o.ReplayRebuildTimeout, DefaultReplayRebuildTimeout)
	setD(&o.SessionTimeout, DefaultSessionTimeout)
	setD(&o.RebalanceTimeout, DefaultRebalanceTimeout)
	setD(&o.RevokeTimeout, min(DefaultRevokeTimeout, o.RebalanceTimeout/2))
	setD(&o.ShutdownTimeout, DefaultShutdownTimeout)
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o, errors.Join(errs...)
}

package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/decryptd/decryptd/internal/config"
	"github.com/decryptd/decryptd/internal/keyops"
	"github.com/decryptd/decryptd/internal/kms"
	"github.com/decryptd/decryptd/internal/rotation"
)

// rotationParts are fleet key rotation's parts (rotation.enabled): the
// tracker runs in every replica, the controller acts only while it holds
// the lease.
type rotationParts struct {
	metrics    *rotation.Metrics
	tracker    *rotation.Tracker
	controller *rotation.Controller
	publisher  *lazyPublisher
	log        *zap.Logger
}

// LeaseSuffix names the lock file of the rotation lease next to a file
// registry (registry.path + LeaseSuffix).
const LeaseSuffix = ".rotation-lease"

// buildRotation makes the rotation parts; the decryptor is wrapped by the
// caller with the tracker.
func (p *parts) buildRotation(o *Options) (*rotationParts, error) {
	cfg := p.cfg
	r := cfg.Rotation
	log := o.Logger.With(zap.String("component", "rotation"))
	m, err := rotation.NewMetrics(o.Registry)
	if err != nil {
		return nil, err
	}
	caps := kms.CapabilitiesOf(p.kms)
	ops, err := keyops.New(keyops.Options{
		KMS: p.kms, Roots: caps.Roots, Registry: p.store, Audit: p.audit,
		Operator: "decryptd rotation (" + cfg.MQTT.ClientID + ")",
	})
	if err != nil {
		return nil, err
	}
	tr, err := rotation.NewTracker(rotation.TrackerOptions{
		Registry: p.store, Adopter: ops, Grace: r.GracePeriod, FlushInterval: r.FlushInterval,
		Metrics: m, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}

	var lease rotation.Lease
	switch cfg.Registry.Driver {
	case config.DriverPostgres:
		lease = &rotation.PGLease{DSN: cfg.Registry.DSN.Reveal()}
	default:
		lease = &rotation.FileLease{Path: cfg.Registry.Path + LeaseSuffix}
	}
	tc, err := tlsConfig(cfg.MQTT.TLS)
	if err != nil {
		return nil, fmt.Errorf("mqtt.tls: %w", err)
	}
	pub := &lazyPublisher{o: rotation.MQTTOptions{
		Brokers: cfg.MQTT.Brokers, ClientID: cfg.MQTT.ClientID + "-rotation", TLS: tc, Timeout: cfg.MQTT.ConnectTimeout,
	}}
	var rootState rotation.RootState
	if caps.RootRotation() {
		rootState = &rotation.KMSRootState{Clock: caps.Clock, Registry: p.store}
	}
	ctl, err := rotation.NewController(rotation.ControllerOptions{
		Policy: rotation.Policy{
			MaxAge: r.MaxDEKAge, GracePeriod: r.GracePeriod,
			SharePerWindow: r.SharePerDay, ShareWindow: 24 * time.Hour,
			RetryInterval: r.RetryInterval, MessageLimit: r.MessageLimit,
			PauseThreshold: r.PauseThreshold, PauseMinSample: r.PauseMinSample,
			RootMaxAge: r.RootKeyMaxAge, RootRotationOff: !r.RootRotationEnabled(),
			Tick: r.Tick,
		},
		Ops: ops, Lease: lease, Publisher: pub, RootState: rootState, RootKeyID: caps.RootKeyID,
		TopicPattern: r.CommandTopic, DeviceType: r.DeviceType,
		Metrics: m, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &rotationParts{metrics: m, tracker: tr, controller: ctl, publisher: pub, log: log}, nil
}

// runTracker runs the tracker until ctx ends, retrying its start (the
// registry's first listing) while that fails.
func (r *rotationParts) runTracker(ctx context.Context) {
	for {
		err := r.tracker.Run(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		r.log.Warn("rotation tracker could not start; retrying", zap.Error(err))
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// lazyPublisher connects the rekey publisher on first use, so only the
// replica that leads holds a broker connection for rekeys. Its client id
// is the consumer's plus "-rotation", its TLS the consumer's (mutual TLS).
type lazyPublisher struct {
	o  rotation.MQTTOptions
	mu sync.Mutex
	p  *rotation.MQTTPublisher
}

func (l *lazyPublisher) Publish(ctx context.Context, topic string, payload []byte) error {
	l.mu.Lock()
	p := l.p
	if p == nil {
		var err error
		p, err = rotation.NewMQTTPublisher(ctx, l.o)
		if err != nil {
			l.mu.Unlock()
			return err
		}
		l.p = p
	}
	l.mu.Unlock()
	return p.Publish(ctx, topic, payload)
}

func (l *lazyPublisher) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.p != nil {
		l.p.Close()
		l.p = nil
	}
}

package rotation

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Publisher sends one rekey message; nil error means the broker took it
// (QoS 2 completed).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// MQTTPublisher publishes rekey messages at QoS 2 over its own connection.
type MQTTPublisher struct {
	c       mqtt.Client
	timeout time.Duration
}

// MQTTOptions configure NewMQTTPublisher.
type MQTTOptions struct {
	Brokers  []string
	ClientID string
	TLS      *tls.Config
	Timeout  time.Duration // per publish (default 10s)
}

// NewMQTTPublisher connects (retrying in the background if the broker is
// down; Publish fails meanwhile and the controller retries later).
func NewMQTTPublisher(ctx context.Context, o MQTTOptions) (*MQTTPublisher, error) {
	if len(o.Brokers) == 0 || o.ClientID == "" {
		return nil, errors.New("rotation: MQTT publisher needs brokers and a client id")
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	co := mqtt.NewClientOptions().SetClientID(o.ClientID).SetCleanSession(true).
		SetAutoReconnect(true).SetMaxReconnectInterval(10 * time.Second).SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).SetKeepAlive(30 * time.Second).SetOrderMatters(false)
	for _, b := range o.Brokers {
		co.AddBroker(b)
	}
	if o.TLS != nil {
		co.SetTLSConfig(o.TLS)
	}
	c := mqtt.NewClient(co)
	tok := c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return nil, fmt.Errorf("rotation: MQTT connect: %w", err)
		}
	case <-ctx.Done():
	case <-time.After(o.Timeout):
		// Keeps retrying in the background.
	}
	return &MQTTPublisher{c: c, timeout: o.Timeout}, nil
}

// Publish implements Publisher (QoS 2, not retained).
func (p *MQTTPublisher) Publish(ctx context.Context, topic string, payload []byte) error {
	if !p.c.IsConnectionOpen() {
		return errors.New("rotation: MQTT publisher not connected")
	}
	tok := p.c.Publish(topic, 2, false, payload)
	t := time.NewTimer(p.timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errors.New("rotation: MQTT publish timed out")
	}
}

// Close disconnects.
func (p *MQTTPublisher) Close() { p.c.Disconnect(250) }

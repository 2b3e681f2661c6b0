package fleet

import (
	"crypto/cipher"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/rekey"
	"github.com/decryptd/decryptd/internal/seal"
)

// Rekey errors (docs/rekey-v1.md, "What a device does": such a message is
// dropped).
var (
	ErrRekeyNotForFleet = errors.New("fleet: rekey for a device or key this fleet does not have")
	// ErrRekeyWrapUnknown is rekey.ErrWrapUnknown.
	ErrRekeyWrapUnknown = rekey.ErrWrapUnknown
	// ErrRekeyRollback is rekey.ErrRollback: a generation not above the
	// highest the device accepted (a replayed older rekey), or none after
	// one was accepted.
	ErrRekeyRollback = rekey.ErrRollback
)

// Rekey installs a rekey message (docs/rekey-v1.md) on its device, as the
// device would (rekey.Take): parse, check it names one of the fleet's
// devices and that device's key, refuse a generation not above the
// highest the device accepted (anti-rollback), open the new DEK with the
// version it is sealed under, keep it next to the old ones, raise the
// device's floor and seal every new message under it. A repeat of an
// installed version is accepted and changes nothing (installed false), not
// even the version the device seals under. Messages already made under an
// older version keep it (the backend decrypts them during the grace
// period).
func (f *Fleet) Rekey(payload []byte) (deviceID, version string, installed bool, err error) {
	m, err := rekey.Parse(payload)
	if err != nil {
		return "", "", false, err
	}
	d := f.byID[m.DeviceID]
	if d == nil {
		return m.DeviceID, m.NewVersion, false, ErrRekeyNotForFleet
	}
	tk, err := rekey.Take(payload, deviceKeyring{d})
	if errors.Is(err, rekey.ErrNotForDevice) {
		// A group member with a key of its own would be sent the group's
		// rekey under that key; fleet devices hold one key each.
		return d.ID, m.NewVersion, false, fmt.Errorf("%w: %w", ErrRekeyNotForFleet, err)
	}
	if err != nil || tk.Repeat {
		return d.ID, m.NewVersion, false, err
	}
	aead, err := seal.NewAEAD(tk.DEK)
	clear(tk.DEK)
	if err != nil {
		return d.ID, m.NewVersion, false, err
	}
	ref := dek.Ref{KeyID: d.KeyID, Version: m.NewVersion}
	f.mu.Lock()
	fk := f.byRef[ref]
	if fk == nil {
		fk = &fleetKey{aead: aead, devices: map[string]struct{}{}}
		f.byRef[ref] = fk
	}
	fk.devices[d.ID] = struct{}{}
	f.mu.Unlock()

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rekeyed == nil {
		d.rekeyed = map[string]cipher.AEAD{}
	}
	if _, have := d.rekeyed[m.NewVersion]; have {
		return d.ID, m.NewVersion, false, nil // a concurrent repeat
	}
	if m.Generation > 0 && m.Generation <= d.floor {
		return d.ID, m.NewVersion, false, fmt.Errorf("%w: a concurrent rekey raised it", ErrRekeyRollback)
	}
	d.rekeyed[m.NewVersion] = fk.aead // group members share one cipher
	d.current = m.NewVersion
	d.floor = max(d.floor, m.Generation)
	return d.ID, m.NewVersion, true, nil
}

// deviceKeyring is a fleet device as rekey.Take sees it.
type deviceKeyring struct{ d *Device }

func (k deviceKeyring) DeviceID() string          { return k.d.ID }
func (k deviceKeyring) UsesKey(keyID string) bool { return keyID == k.d.KeyID }
func (k deviceKeyring) Floor(string) uint64       { return k.d.Floor() }
func (k deviceKeyring) Key(keyID, version string) cipher.AEAD {
	if keyID != k.d.KeyID {
		return nil
	}
	return k.d.key(version)
}

// RekeyFilter turns a command topic pattern ({device_type}, {device_id};
// "" for rekey.DefaultTopic) into the filter that covers every device.
func RekeyFilter(pattern string) string {
	if pattern == "" {
		pattern = rekey.DefaultTopic
	}
	return strings.NewReplacer("{device_type}", "+", "{device_id}", "+").Replace(pattern)
}

// SubscribeRekeys subscribes the publisher's first connection to every
// device's command topic (pattern as RekeyFilter) at QoS 2, for the run's
// lifetime (again after a reconnect), and installs each rekey on its
// device (Fleet.Rekey); a rekey published on another device's topic is
// dropped. onRekey, when set, is told of each one (from paho's goroutine:
// keep it short). A real device subscribes to its own topic with a
// persistent session; the simulator multiplexes, as for publishing.
func (p *Publisher) SubscribeRekeys(f *Fleet, pattern string, onRekey func(deviceID, version string, installed bool, err error)) error {
	if pattern == "" {
		pattern = rekey.DefaultTopic
	}
	handler := func(_ mqtt.Client, msg mqtt.Message) {
		id, ver, installed, err := f.Rekey(msg.Payload())
		if err == nil {
			if d := f.byID[id]; d == nil || msg.Topic() != rekey.Topic(pattern, d.Type, d.ID) {
				err = fmt.Errorf("%w: on topic %s", ErrRekeyNotForFleet, msg.Topic())
			}
		}
		if onRekey != nil {
			onRekey(id, ver, installed, err)
		}
	}
	sub := subscription{filter: RekeyFilter(pattern), qos: 2, handler: handler}
	p.subMu.Lock()
	p.subs = append(p.subs, sub)
	p.subMu.Unlock()
	return sub.on(p.conns[0].client, p.opts.ConnectTimeout)
}

// subscription is one topic filter the first connection holds.
type subscription struct {
	filter  string
	qos     byte
	handler mqtt.MessageHandler
}

func (s subscription) on(c mqtt.Client, timeout time.Duration) error {
	tok := c.Subscribe(s.filter, s.qos, s.handler)
	if !tok.WaitTimeout(timeout) {
		return fmt.Errorf("fleet: subscribe %s: no answer within %s", s.filter, timeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("fleet: subscribe %s: %w", s.filter, err)
	}
	return nil
}

// resubscribe renews the subscriptions after connection 0 reconnected
// (its session is clean).
func (p *Publisher) resubscribe(c mqtt.Client) {
	p.subMu.Lock()
	subs := append([]subscription(nil), p.subs...)
	p.subMu.Unlock()
	for _, s := range subs {
		go func() { _ = s.on(c, p.opts.ConnectTimeout) }() // not on paho's connect goroutine
	}
}

package decrypt

import (
	"context"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/decryptd/decryptd/internal/dek"
	"github.com/decryptd/decryptd/internal/intake"
)

// Message is one message as an input received it (intake.Message). The
// decryptor reads Topic (the record's topic, part of the message digest,
// and the device id when the input determined none), DeviceID (checked
// against the payload's device_id), Payload and ReceivedAt (the record's
// received_at and the stale check's reference; zero means Options.Now() at
// Open). It does not read Redelivered: an exact repeat is a duplicate with
// or without it (amendment 1); callers count duplicates by it.
type Message = intake.Message

// Decryptor turns messages into records or failure reasons. It is safe for
// concurrent use.
type Decryptor struct {
	keys  KeyResolver
	opts  Options
	topic intake.TopicPattern
	win   *window // nil when the replay window is disabled
	pool  sync.Pool
}

// New returns a Decryptor that resolves keys through keys. Zero Options
// fields take their defaults; an invalid option is an error naming it.
func New(keys KeyResolver, opts Options) (*Decryptor, error) {
	if keys == nil {
		return nil, errors.New("decrypt: nil KeyResolver")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	tp, err := intake.ParseTopicPattern(opts.TopicPattern)
	if err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	d := &Decryptor{keys: keys, opts: opts, topic: tp}
	if !opts.ReplayDisabled {
		d.win = newWindow(opts.ReplayEntries, opts.ReplayMaxAge)
	}
	d.pool.New = func() any { return new(state) }
	return d, nil
}

// state is the per-call scratch space, pooled so a message costs only the
// record's own allocations. Every buffer that may hold plaintext is wiped
// before it goes back to the pool.
type state struct {
	msg  scanner // the message
	sub  scanner // each plaintext
	refs []sealedRef
	env  []byte // device id, timestamp digits, key id, key version (stable copies)
	meta []byte // shape A record metadata
	bin  []byte // decoded SEALED values, opened in place
	aad  []byte
	out  []byte
	rec  []byte // the record's room for metadata and plaintext (newRecord), empty
	keys []replayKey
	pts  []span // each sealed value's plaintext JSON value, in bin
}

func (st *state) wipe() {
	st.msg.release()
	st.sub.release()
	clear(st.refs)
	clear(st.bin)
	clear(st.out)
	clear(st.meta)
	st.refs, st.bin, st.out, st.meta = st.refs[:0], st.bin[:0], st.out[:0], st.meta[:0]
	st.rec = nil // the record's, not scratch: only dropped
}

// envelope is what Open learns before it needs a key.
type envelope struct {
	shapeA     bool
	deviceID   []byte
	tsText     []byte
	ts         int64
	keyID      []byte // the effective key id (device/<id> when absent)
	keyVersion []byte // nil when absent (shape B only)
	sealed     []sealedRef
}

// Open decrypts one message. It returns a record, or an error carrying one
// reason sentinel (see Reason), ErrDuplicate, or ErrTransient; never both a
// record and an error, and never part of a plaintext. Checks run in the
// spec's order, and everything that can be checked without a key is checked
// before the key is looked up.
func (d *Decryptor) Open(ctx context.Context, m Message) (Record, error) {
	return d.openPooled(ctx, m, false)
}

// TryOpen is Open that never waits: when the message's key is not cached
// (or the resolver is not a CachedKeyResolver) it returns ErrWouldBlock
// having recorded nothing (it asks the resolver to start loading the key),
// and Open, which may wait for the KMS, decides.
// Every other answer is Open's.
func (d *Decryptor) TryOpen(m Message) (Record, error) {
	if _, ok := d.keys.(CachedKeyResolver); !ok {
		return Record{}, ErrWouldBlock
	}
	return d.openPooled(context.Background(), m, true)
}

// openPooled is Open and TryOpen: the size check, then open with pooled
// scratch space, wiped before it goes back.
func (d *Decryptor) openPooled(ctx context.Context, m Message, noWait bool) (Record, error) {
	if len(m.Payload) > d.opts.MaxMessageBytes {
		return Record{}, fmt.Errorf("%w: %d bytes, over the %d-byte limit", ErrMalformed, len(m.Payload), d.opts.MaxMessageBytes)
	}
	st := d.pool.Get().(*state)
	rec, err := d.open(ctx, st, m, noWait)
	st.wipe()
	d.pool.Put(st)
	return rec, err
}

func (d *Decryptor) open(ctx context.Context, st *state, m Message, noWait bool) (Record, error) {
	env, err := st.parse(m.Payload)
	if err != nil {
		return Record{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var id [sha256.Size]byte
	if len(env.sealed) > 0 {
		id = st.replayKeys(&env)
		if d.win != nil {
			// The window's lines are read from memory while the rest of
			// the message is checked, the key resolved and the message
			// opened: as early as the triples are known, since at the
			// production size a line is a miss to memory that takes about
			// as long as all that work. A hint only, for any message
			// (checks still to come may refuse it).
			for i := range st.keys {
				d.win.prefetch(&st.keys[i])
			}
		}
	}
	received, err := d.checkEnvelope(m, &env)
	if err != nil {
		return Record{}, err
	}
	if len(env.sealed) == 0 {
		return st.plainRecord(m, received, env), nil
	}
	// rec is filled in place (a Record is a few hundred bytes: no copies).
	var rec Record
	st.newRecord(&rec, m, received, &env, &id)
	aead, err := d.resolve(ctx, &rec, noWait)
	if err != nil {
		return Record{}, err
	}
	if err := st.openSealed(aead, &env, &rec); err != nil {
		return Record{}, err
	}
	if d.win != nil {
		// Ages count from the receive time: no second clock read per
		// message, and a message retried after a transient fault keeps the
		// age of its first receipt.
		dg := d.win.dg.digest(m.Topic, m.Payload)
		if err := d.win.admit(st.keys, &dg, received.UnixNano()); err != nil {
			return Record{}, fmt.Errorf("%w: nonce already accepted under %s %s", err, rec.KeyID, rec.KeyVersion)
		}
		rec.rk0, rec.rkN = st.keys[0], len(st.keys)
		if len(st.keys) > 1 {
			rec.rkMore = slices.Clone(st.keys)
		}
	}
	if env.shapeA {
		// Into the room newRecord left after the record's strings.
		p := st.pts[0]
		buf := append(st.rec, st.meta...)
		n := len(buf)
		buf = append(buf, st.bin[p.start:p.end]...)
		rec.Metadata, rec.Data = buf[:n:n], buf[n:len(buf):len(buf)]
		rec.Sealed = wholeData
		return rec, nil
	}
	st.out = st.appendShapeBData(st.out[:0], env)
	rec.Data = slices.Clone(st.out)
	rec.Sealed = make([]string, len(env.sealed))
	for i := range env.sealed {
		rec.Sealed[i] = string(env.sealed[i].ptr)
	}
	return rec, nil
}

// checkEnvelope runs the checks that need no key and come after malformed
// (st.parse) in the spec's order: topic_mismatch, stale. It returns the
// receive time.
func (d *Decryptor) checkEnvelope(m Message, env *envelope) (time.Time, error) {
	// The device id the input determined (the MQTT input reads it from the
	// topic); a message without one (a replayed dead letter) falls back to
	// Options.TopicPattern.
	dev, ok := m.DeviceID, m.DeviceID != ""
	if !ok {
		dev, ok = d.topic.DeviceID(m.Topic)
	}
	if ok && dev != string(env.deviceID) {
		return time.Time{}, fmt.Errorf("%w: topic carries device %q, message device_id is %q", ErrTopicMismatch, dev, env.deviceID)
	}
	received := m.ReceivedAt
	if received.IsZero() {
		received = d.opts.Now()
	}
	if skew := d.opts.ClockSkew; skew > 0 {
		if diff := timestampTime(env.ts).Sub(received); diff > skew || diff < -skew {
			return time.Time{}, fmt.Errorf("%w: timestamp %s is %s from receive time, window %s", ErrStale, env.tsText, diff.Round(time.Second), skew)
		}
	}
	return received, nil
}

// replayKeys computes each sealed value's replay key (st.keys) and returns
// the first value's SHA-256, the record id (one hash serves both).
func (st *state) replayKeys(env *envelope) (id [sha256.Size]byte) {
	st.keys = st.keys[:0]
	for i := range env.sealed {
		b := st.bin[env.sealed[i].bin.start:]
		h := append(st.aad[:0], env.keyID...)
		h = append(h, 0)
		h = append(h, env.keyVersion...)
		h = append(h, 0)
		h = append(h, b[:nonceSize]...)
		st.aad = h
		sum := sha256.Sum256(h)
		if i == 0 {
			id = sum
		}
		st.keys = append(st.keys, replayKey(sum[:len(replayKey{})]))
	}
	return id
}

// newRecord fills in what needs no key: the record's id (the hex of id,
// from replayKeys) and names, into rec. The record's own bytes take one
// allocation: its strings first, then (shape A) room for its metadata and
// plaintext, which open fills in once the message has opened (st.rec). The
// strings' bytes are never written again, and no slice of the record
// reaches them (Metadata and Data lie after them, their capacity capped),
// so they may back strings.
func (st *state) newRecord(rec *Record, m Message, received time.Time, env *envelope, id *[sha256.Size]byte) {
	o := 2 * sha256.Size
	n := o + len(env.deviceID) + len(env.keyID) + len(env.keyVersion)
	size := n
	if env.shapeA {
		// The plaintext is the sealed value less nonce and tag.
		sp := env.sealed[0].bin
		size += len(st.meta) + sp.end - sp.start - sealedMin
	}
	buf := make([]byte, n, size)
	hexEncode(buf, id[:])
	copy(buf[o:], env.deviceID)
	copy(buf[o+len(env.deviceID):], env.keyID)
	copy(buf[o+len(env.deviceID)+len(env.keyID):], env.keyVersion)
	strs := unsafe.String(&buf[0], n)
	st.rec = buf[n:n:size]
	rec.ID, rec.Topic, rec.ReceivedAt, rec.Timestamp = strs[:o], m.Topic, received, env.ts
	rec.DeviceID, o = strs[o:o+len(env.deviceID)], o+len(env.deviceID)
	rec.KeyID, o = strs[o:o+len(env.keyID)], o+len(env.keyID)
	rec.KeyVersion = strs[o:]
}

// resolve looks up rec's key: unknown_key, key_revoked, ErrTransient, or
// (noWait) ErrWouldBlock having asked for the key to be loaded.
func (d *Decryptor) resolve(ctx context.Context, rec *Record, noWait bool) (cipher.AEAD, error) {
	var aead cipher.AEAD
	var err error
	if noWait {
		ck := d.keys.(CachedKeyResolver)
		aead, err = ck.ResolveCachedKey(rec.KeyID, rec.KeyVersion, rec.DeviceID)
		if errors.Is(err, dek.ErrWouldWait) {
			// Whoever goes on to Open finds the key sooner.
			ck.PrefetchKey(rec.KeyID, rec.KeyVersion, rec.DeviceID)
			return nil, ErrWouldBlock
		}
	} else {
		aead, err = d.keys.ResolveKey(ctx, rec.KeyID, rec.KeyVersion, rec.DeviceID)
	}
	switch {
	case err == nil && aead == nil:
		return nil, fmt.Errorf("%w: key resolver returned no cipher for %s %s", ErrTransient, rec.KeyID, rec.KeyVersion)
	case err == nil:
	case errors.Is(err, dek.ErrUnknownKey):
		return nil, fmt.Errorf("%w: %s %s for device %s: %w", ErrUnknownKey, rec.KeyID, rec.KeyVersion, rec.DeviceID, err)
	case errors.Is(err, dek.ErrRevoked):
		return nil, fmt.Errorf("%w: %s %s: %w", ErrKeyRevoked, rec.KeyID, rec.KeyVersion, err)
	default:
		// dek.ErrUnavailable, a cancelled context, or anything the resolver
		// could not classify: never dead-letter on a fault of ours.
		return nil, fmt.Errorf("%w: resolve %s %s: %w", ErrTransient, rec.KeyID, rec.KeyVersion, err)
	}
	if aead.NonceSize() != nonceSize || aead.Overhead() != tagSize {
		// cipher.AEAD.Open panics on a nonce of the wrong size.
		return nil, fmt.Errorf("%w: key resolver returned a cipher with nonce size %d, overhead %d; want AES-GCM",
			ErrTransient, aead.NonceSize(), aead.Overhead())
	}
	return aead, nil
}

// openSealed opens every sealed value in place, then checks every
// plaintext (auth_failed comes before bad_plaintext in the spec's order),
// leaving each plaintext's JSON value in st.pts.
func (st *state) openSealed(aead cipher.AEAD, env *envelope, rec *Record) error {
	st.pts = st.pts[:0]
	for i := range env.sealed {
		sp := env.sealed[i].bin
		b := st.bin[sp.start:sp.end:sp.end]
		aad := append(st.aad[:0], env.deviceID...)
		aad = append(aad, 0)
		aad = append(aad, env.tsText...)
		if !env.shapeA {
			aad = append(aad, 0)
			aad = append(aad, env.sealed[i].ptr...)
		}
		st.aad = aad
		ct := b[nonceSize:]
		pt, err := aead.Open(ct[:0], b[:nonceSize], ct, aad)
		if err != nil {
			if env.shapeA {
				return fmt.Errorf("%w: encrypted_data under %s %s", ErrAuthFailed, rec.KeyID, rec.KeyVersion)
			}
			return fmt.Errorf("%w: field %s under %s %s", ErrAuthFailed, env.sealed[i].ptr, rec.KeyID, rec.KeyVersion)
		}
		start := sp.start + nonceSize
		st.pts = append(st.pts, span{start, start + len(pt)})
	}
	for i, p := range st.pts {
		k, v, err := st.sub.document(st.bin[p.start:p.end], false)
		if err != nil {
			if env.shapeA {
				return fmt.Errorf("%w: %v", ErrBadPlaintext, err)
			}
			return fmt.Errorf("%w: field %s: %v", ErrBadPlaintext, env.sealed[i].ptr, err)
		}
		if env.shapeA && k != kindObject {
			return fmt.Errorf("%w: plaintext is not a JSON object", ErrBadPlaintext)
		}
		st.pts[i] = span{p.start + v.start, p.start + v.end}
	}
	return nil
}

// wholeData is Record.Sealed of every shape A record (read-only).
var wholeData = []string{""}

// plainRecord is the record of a shape B message without sealed values.
func (st *state) plainRecord(m Message, received time.Time, env envelope) Record {
	id := sha256.Sum256(m.Payload)
	out := append(st.out[:0], make([]byte, 2*sha256.Size)...)
	hexEncode(out, id[:])
	out = append(out, env.deviceID...)
	strs := string(out)
	st.out = st.appendShapeBData(out[:0], env)
	return Record{
		ID:         strs[:2*sha256.Size],
		DeviceID:   strs[2*sha256.Size:],
		Timestamp:  env.ts,
		Topic:      m.Topic,
		ReceivedAt: received,
		Data:       slices.Clone(st.out),
	}
}

// appendShapeBData appends the message less its envelope members, each
// sealed string replaced by its plaintext value (st.pts, in order).
func (st *state) appendShapeBData(dst []byte, env envelope) []byte {
	s := &st.msg
	dst = append(dst, '{')
	first := true
	si := 0
	for i := range s.top {
		mb := &s.top[i]
		if isEnvelopeName(s.name(mb.name)) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		pos := mb.start
		for si < len(env.sealed) && env.sealed[si].raw.start < mb.val.end {
			r := env.sealed[si].raw
			dst = append(dst, s.buf[pos:r.start]...)
			p := st.pts[si]
			dst = append(dst, st.bin[p.start:p.end]...)
			pos = r.end
			si++
		}
		dst = append(dst, s.buf[pos:mb.val.end]...)
	}
	return append(dst, '}')
}

func isEnvelopeName(name []byte) bool {
	switch string(name) {
	case "device_id", "timestamp", "key_version", "key_id":
		return true
	}
	return false
}

// parse scans the message and checks everything the spec calls malformed.
func (st *state) parse(payload []byte) (envelope, error) {
	var env envelope
	s := &st.msg
	if _, _, err := s.document(payload, true); err != nil {
		return env, err
	}
	var dev, ts *member
	if ed := s.get(knownEncryptedData); ed != nil {
		env.shapeA = true
		if ed.kind != kindString {
			return env, errors.New("encrypted_data: not a string")
		}
		md := s.get(knownMetadata)
		if md == nil {
			return env, errors.New("metadata: missing")
		}
		if md.kind != kindObject {
			return env, errors.New("metadata: not an object")
		}
		dev, ts = s.get(knownMetaDeviceID), s.get(knownMetaTimestamp)
		if dev == nil || ts == nil {
			return env, errors.New("metadata: device_id and timestamp required")
		}
		meta := append(st.meta[:0], '{')
		for i := range s.meta {
			mb := &s.meta[i]
			if n := s.name(mb.name); string(n) == "device_id" || string(n) == "timestamp" {
				continue
			}
			if len(meta) > 1 {
				meta = append(meta, ',')
			}
			meta = append(meta, s.buf[mb.start:mb.val.end]...)
		}
		st.meta = append(meta, '}')
		st.refs = append(st.refs[:0], sealedRef{raw: ed.val, top: -1, text: s.stringValue(ed)})
	} else {
		dev, ts = s.get(knownDeviceID), s.get(knownTimestamp)
		if dev == nil || ts == nil {
			return env, errors.New("device_id and timestamp required")
		}
		st.refs = st.refs[:0]
		for _, r := range s.sealed {
			if !isEnvelopeName(s.name(s.top[r.top].name)) {
				st.refs = append(st.refs, r)
			}
		}
	}
	env.sealed = st.refs

	// Stable copies of the names: a scanner's arena is wiped when it is
	// reused for the plaintexts.
	e := st.env[:0]
	if dev.kind != kindString {
		return env, errors.New("device_id: not a string")
	}
	v := s.stringValue(dev)
	if !dek.ValidDeviceID(v) {
		return env, errors.New("device_id: outside its alphabet or length")
	}
	e = append(e, v...)
	nDev := len(e)
	if ts.kind != kindNumber {
		return env, errors.New("timestamp: not a number")
	}
	tsText := s.buf[ts.val.start:ts.val.end]
	t, err := parseTimestamp(tsText)
	if err != nil {
		return env, err
	}
	env.ts = t
	e = append(e, tsText...)
	nTS := len(e)

	kv := s.get(knownKeyVersion)
	switch {
	case kv != nil && kv.kind != kindString:
		return env, errors.New("key_version: not a string")
	case kv != nil:
		v := s.stringValue(kv)
		if !dek.ValidKeyVersion(v) {
			return env, errors.New("key_version: outside its alphabet or length")
		}
		e = append(e, v...)
	case env.shapeA:
		return env, errors.New("key_version: missing")
	case len(env.sealed) > 0:
		return env, errors.New("key_version: missing, required with sealed fields")
	}
	nKV := len(e)
	if ki := s.get(knownKeyID); ki != nil {
		if ki.kind != kindString {
			return env, errors.New("key_id: not a string")
		}
		v := s.stringValue(ki)
		if !dek.ValidKeyID(v) {
			return env, errors.New("key_id: outside its alphabet or length")
		}
		e = append(e, v...)
	} else {
		e = append(e, dek.DeviceKeyPrefix...)
		e = append(e, e[:nDev]...)
	}
	st.env = e
	env.deviceID = e[:nDev:nDev]
	env.tsText = e[nDev:nTS:nTS]
	if kv != nil {
		env.keyVersion = e[nTS:nKV:nKV]
	}
	env.keyID = e[nKV:]

	st.bin = st.bin[:0]
	for i := range env.sealed {
		r := &env.sealed[i]
		n := len(st.bin)
		st.bin, err = appendBase64(st.bin, r.text)
		if err != nil {
			if env.shapeA {
				return env, fmt.Errorf("encrypted_data: %w", err)
			}
			return env, fmt.Errorf("field %s: %w", r.ptr, err)
		}
		if len(st.bin)-n < sealedMin {
			return env, fmt.Errorf("sealed value of %d bytes, shorter than %d", len(st.bin)-n, sealedMin)
		}
		r.bin = span{n, len(st.bin)}
	}
	return env, nil
}

// Forget removes r's entries from the replay window: for a caller that
// could not deliver r, so that the broker's redelivery of its message is
// decrypted again instead of being taken for a duplicate or a replay.
func (d *Decryptor) Forget(r Record) {
	if d.win == nil {
		return
	}
	if keys := r.replayKeys(); len(keys) > 0 {
		d.win.forget(keys)
	}
}

package decrypt

import (
	"context"
	"errors"
)

// Remember records m in the replay window as Open would accept it, and
// returns no record: for an input rebuilding the window from a log of
// messages already delivered (the Kafka input reads back a partition it
// was just assigned, up to the committed offset), so that a later exact
// repeat of one of them is ErrDuplicate and a reuse of its nonce
// ErrReplay, whichever replica delivered it first.
//
// The message is checked and authenticated as by Open (a forgery never
// enters the window); its plaintext is wiped before Remember returns. The
// answer is Open's error: nil (now remembered), ErrDuplicate (it was
// already), a reason (it was not accepted then either: nothing to
// remember), ErrTransient or the context's error (the caller retries).
// m.ReceivedAt should be when the message was first received (the log's
// timestamp), so its entry expires when the original's would.
//
// Remember is built only on Open (no window internals), so it keeps its
// contract whatever the window's layout.
func (d *Decryptor) Remember(ctx context.Context, m Message) error {
	rec, err := d.Open(ctx, m)
	clear(rec.Data)
	clear(rec.Metadata)
	return err
}

// IsRetryable reports whether err, from Open or Remember, means "try
// again later" (a transient key fault or an ended context) rather than an
// answer about the message.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrTransient) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

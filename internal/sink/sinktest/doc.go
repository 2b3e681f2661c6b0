// Package sinktest holds the contract suite every sink.Sink passes (Run) and
// helpers that build test records. It talks only to the sink.Sink interface
// and to a reader of the sink's medium (a file's contents, a captured stdout
// buffer, an MQTT subscriber, an HTTP test server), so every sink that
// passes it keeps the same promises: what Write accepted is on the medium,
// in batch order; an empty batch is a no-op; a repeated batch is accepted;
// Write after Close fails with sink.ErrClosed; Flush and Close may be
// repeated; a cancelled or expired context makes Write return the context's
// error instead of hanging; a batch with a bad record is refused whole.
//
// The suite never calls Write, Flush or Close concurrently on one sink (the
// contract rules that out), but it does call them from different goroutines
// one after another, so the race detector sees the hand-offs.
package sinktest

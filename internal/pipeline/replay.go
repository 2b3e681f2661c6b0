package pipeline

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"sync"

	"github.com/decryptd/decryptd/internal/sink"
)

// Summary counts what Replay did. Reasons holds every dead-letter reason
// (zero included) so the output's shape does not depend on the input.
type Summary struct {
	Processed    int `json:"processed"`
	Delivered    int `json:"delivered"`
	DeadLettered int `json:"dead_lettered"`
	Duplicates   int `json:"duplicates"`
	// DuplicatesByCause splits Duplicates by cause (DuplicateCauses, zero
	// included): redelivery (DUP set) and repeat.
	DuplicatesByCause map[string]int `json:"duplicates_by_cause"`
	Reasons           map[string]int `json:"reasons"`
	KMSUnwraps        uint64         `json:"kms_unwraps"`
	// BadLines counts input lines that are not dead letters (skipped).
	BadLines int `json:"bad_lines"`
}

// replayWorkers bounds the messages replayed at once. Messages of one topic
// go to one worker, in input order, as the consumer does, so a device's
// messages are seen in the order they were dead-lettered; those without a
// topic (Kafka records that named none) go by their Kafka partition, as the
// Kafka input orders them.
const replayWorkers = 16

// Replay runs the dead letters read from r (one JSON object per line, as a
// dead-letter sink writes them; sink.ReadDeadLetters) through p, exactly as
// if they had just arrived: those that now decrypt go to the sinks, the
// others to the dead-letter sink again. Each keeps its topic, DUP flag,
// original receive time, input (Source) and Kafka position, so a message
// that fails again is dead-lettered naming the input and the Kafka record
// it first came from, however often it is replayed. A Kafka record's dead
// letter without a topic (the input could map none) is replayed without
// one, as the pipeline first took it (no device id to check the payload's
// against). Lines that are not dead letters are counted and skipped. It
// returns when every message is held somewhere, or with ctx's error (or
// r's) and the counts so far.
//
// The caller must not replay the dead-letter sink's own file into p: the
// replay would read what it appends.
func Replay(ctx context.Context, p *Pipeline, r io.Reader) (Summary, error) {
	var before uint64
	if p.o.KMSUnwraps != nil {
		before = p.o.KMSUnwraps()
	}
	sum := Summary{Reasons: map[string]int{}, DuplicatesByCause: map[string]int{}}
	for _, c := range DuplicateCauses() {
		sum.DuplicatesByCause[c] = 0
	}
	for _, reason := range deadLetterReasons() {
		sum.Reasons[reason] = 0
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var mu sync.Mutex
	var wg sync.WaitGroup
	queues := make([]chan sink.DeadLetter, replayWorkers)
	for i := range queues {
		queues[i] = make(chan sink.DeadLetter, 8)
		wg.Add(1)
		go func(q <-chan sink.DeadLetter) {
			defer wg.Done()
			for d := range q {
				res, err := p.handle(ctx, d.Message)
				if err != nil {
					cancel(err)
					continue // drain the queue; the context has ended
				}
				mu.Lock()
				sum.Processed++
				switch res.Outcome {
				case OutcomeDelivered:
					sum.Delivered++
				case OutcomeDuplicate:
					sum.Duplicates++
					sum.DuplicatesByCause[res.Cause]++
				case OutcomeDeadLettered:
					sum.DeadLettered++
					sum.Reasons[res.Reason]++
				}
				mu.Unlock()
			}
		}(queues[i])
	}

	var readErr error
	bad := 0
read:
	for d, err := range sink.ReadDeadLetters(r) {
		switch {
		case errors.Is(err, sink.ErrBadDeadLetter):
			bad++
			continue
		case err != nil:
			readErr = fmt.Errorf("replay: %w", err)
			break read
		}
		h := fnv.New32a()
		if d.Topic == "" && !d.Position.IsZero() {
			h.Write([]byte(d.Position.Topic))
			h.Write([]byte{byte(d.Position.Partition >> 24), byte(d.Position.Partition >> 16), byte(d.Position.Partition >> 8), byte(d.Position.Partition)})
		} else {
			h.Write([]byte(d.Topic))
		}
		select {
		case queues[h.Sum32()%replayWorkers] <- d:
		case <-ctx.Done():
			break read
		}
	}
	for _, q := range queues {
		close(q)
	}
	wg.Wait()

	sum.BadLines = bad
	if p.o.KMSUnwraps != nil {
		sum.KMSUnwraps = p.o.KMSUnwraps() - before
	}
	if readErr != nil {
		return sum, readErr
	}
	if err := context.Cause(ctx); err != nil {
		return sum, fmt.Errorf("replay: %w", err)
	}
	return sum, nil
}

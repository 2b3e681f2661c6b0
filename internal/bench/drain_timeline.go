package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"
)

// sizeTimeline follows a growing file by its size alone, one lseek a poll
// and nothing read, keeping a sample each time the size changed. After the
// drain, the line ending at offset e was seen (could first have been read
// whole) at the first sample whose size reaches e.
type sizeTimeline struct {
	f       *os.File
	size    int64
	samples []sizeSample
}

type sizeSample struct {
	at   time.Duration // since the drain started
	size int64         // bytes
}

func openSizeTimeline(path string) (*sizeTimeline, error) {
	// The sink creates the file in daemon.New.
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open sink file: %w", err)
	}
	// Room for a long drain's samples, so that the loop does not grow it.
	return &sizeTimeline{f: f, samples: make([]sizeSample, 0, 1<<14)}, nil
}

func (t *sizeTimeline) poll(start time.Time) error {
	n, err := t.f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("sink file size: %w", err)
	}
	if n != t.size {
		t.size = n
		t.samples = append(t.samples, sizeSample{at: time.Since(start), size: n})
	}
	return nil
}

func (t *sizeTimeline) close() { t.f.Close() }

// tailer counts the lines of a growing file by reading what was appended
// since its last poll. The cold start waits on it; the drain does not
// (sizeTimeline), since these reads would be charged to decryptd's CPU.
type tailer struct {
	f     *os.File
	buf   []byte
	lines atomic.Int64
}

func openTail(path string) (*tailer, error) {
	// The sink creates the file in daemon.New.
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open sink file: %w", err)
	}
	return &tailer{f: f, buf: make([]byte, 1<<20)}, nil
}

func (t *tailer) poll() error {
	for {
		k, err := t.f.Read(t.buf)
		t.lines.Add(int64(bytes.Count(t.buf[:k], []byte{'\n'})))
		if err == io.EOF || k == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read sink file: %w", err)
		}
	}
}

func (t *tailer) close() { t.f.Close() }

// recordLatencies reads the records back once, after the drain: it counts
// them, and takes from each the latency from its timestamp to received_at
// (the daemon's receipt) and to when the harness saw the line, the first
// of samples whose size reaches the line's end.
func recordLatencies(path string, samples []sizeSample, start time.Time) (receipt, sink Latency, lines int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return receipt, sink, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	sc.Split(scanRawLines)
	var rec, snk []float64
	var end int64 // the current line's end offset, its newline included
	si := 0
	for sc.Scan() {
		line := sc.Bytes()
		lines++
		end += int64(len(line))
		for si < len(samples) && samples[si].size < end {
			si++
		}
		ts := timestampOf(line) // the record's "timestamp" member, as sent
		if ts == 0 {
			continue
		}
		sent := time.UnixMilli(ts)
		if i := bytes.Index(line, []byte(`"received_at":"`)); i >= 0 {
			rest := line[i+len(`"received_at":"`):]
			if j := bytes.IndexByte(rest, '"'); j > 0 {
				if at, err := time.Parse(time.RFC3339Nano, string(rest[:j])); err == nil {
					rec = append(rec, float64(at.Sub(sent).Microseconds())/1000)
				}
			}
		}
		if si < len(samples) {
			seen := start.Add(samples[si].at)
			snk = append(snk, float64(seen.Sub(sent).Microseconds())/1000)
		}
	}
	if err := sc.Err(); err != nil {
		return receipt, sink, lines, fmt.Errorf("read sink file: %w", err)
	}
	return summarise(rec), summarise(snk), lines, nil
}

// scanRawLines is bufio.ScanLines keeping each line's bytes as they are,
// newline included, so that their lengths add up to file offsets.
func scanRawLines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i+1], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

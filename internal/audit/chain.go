package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// zeroHash is the prev of the first line.
const zeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

const hashIntro = `,"hash":"`

// suffixLen is the length of `,"hash":"<64 hex>"}`.
const suffixLen = len(hashIntro) + 64 + 2

// ErrChainBroken: a line does not follow from the one before (or is not a
// well-formed line). The *ChainError carrying it names the line.
var ErrChainBroken = errors.New("audit: hash chain broken")

// ErrTruncated: the log ends before, or differs at, the anchored line.
var ErrTruncated = errors.New("audit: log truncated or rewritten before its anchor")

// ChainError says where and why verification stopped. errors.Is(err,
// ErrChainBroken) (or ErrTruncated, for an anchor check) holds.
type ChainError struct {
	Line   int // 1-based
	Reason string
	err    error
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("%v: line %d: %s", e.err, e.Line, e.Reason)
}

func (e *ChainError) Unwrap() error { return e.err }

// Anchor names one line of the log by its seq and hash, kept elsewhere so
// that truncation can be detected (VerifyAnchor).
type Anchor struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// encodeLine renders e (Seq and Prev set) as one line without the newline,
// and returns it with its hash.
func encodeLine(buf []byte, e *Event) ([]byte, string, error) {
	body, err := json.Marshal(e)
	if err != nil {
		return nil, "", fmt.Errorf("audit: encode event: %w", err)
	}
	body = body[:len(body)-1] // drop "}": the hash member follows
	sum := sha256.Sum256(body)
	h := hex.EncodeToString(sum[:])
	buf = append(buf[:0], body...)
	buf = append(buf, hashIntro...)
	buf = append(buf, h...)
	buf = append(buf, '"', '}')
	return buf, h, nil
}

// parseLine checks one line (without its newline) against its own hash and
// decodes it strictly. It does not check the link to the previous line.
func parseLine(line []byte) (Event, error) {
	if len(line) < suffixLen+2 || line[0] != '{' {
		return Event{}, errors.New("not an audit line")
	}
	body, suffix := line[:len(line)-suffixLen], line[len(line)-suffixLen:]
	if !bytes.HasPrefix(suffix, []byte(hashIntro)) || !bytes.HasSuffix(suffix, []byte(`"}`)) {
		return Event{}, errors.New(`line does not end with its "hash" member`)
	}
	claimed := string(suffix[len(hashIntro) : len(hashIntro)+64])
	if !isHex64(claimed) {
		return Event{}, errors.New("hash is not 64 lowercase hex digits")
	}
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:]) != claimed {
		return Event{}, errors.New("line content does not match its hash (line altered)")
	}
	var e Event
	dec := json.NewDecoder(io.MultiReader(bytes.NewReader(body), strings.NewReader("}")))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return Event{}, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return Event{}, errors.New("trailing data")
	}
	switch {
	case e.Seq == 0:
		return Event{}, errors.New("seq missing or zero")
	case !isHex64(e.Prev):
		return Event{}, errors.New("prev is not 64 lowercase hex digits")
	case e.Time.IsZero():
		return Event{}, errors.New("time missing")
	case !validToken(e.Actor), !validToken(string(e.Action)), !validToken(e.Result):
		return Event{}, errors.New("actor, action or result missing or malformed")
	}
	e.Hash = claimed
	return e, nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Verify reads a whole log and checks every line and every link. n is the
// number of lines that verified. The first broken line is reported as a
// *ChainError wrapping ErrChainBroken; a read error is returned as is.
// Lines removed from the end cannot be detected here (see VerifyAnchor).
func Verify(r io.Reader) (n int, err error) {
	return verify(r, nil)
}

// VerifyAnchor is Verify plus a check that the line with the anchor's seq is
// present and has the anchor's hash: lines cut from the end, or a log
// rewritten from some point, fail with a *ChainError wrapping ErrTruncated.
func VerifyAnchor(r io.Reader, a Anchor) (n int, err error) {
	found := false
	n, err = verify(r, func(line int, e Event) error {
		if e.Seq == a.Seq {
			found = true
			if e.Hash != a.Hash {
				return &ChainError{Line: line, Reason: fmt.Sprintf("seq %d has hash %s, anchor says %s", a.Seq, e.Hash, a.Hash), err: ErrTruncated}
			}
		}
		return nil
	})
	if err == nil && !found && a.Seq > 0 {
		return n, &ChainError{Line: n + 1, Reason: fmt.Sprintf("log ends at seq %d, before the anchored seq %d", n, a.Seq), err: ErrTruncated}
	}
	return n, err
}

func verify(r io.Reader, each func(line int, e Event) error) (int, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	prev, seq, n := zeroHash, uint64(0), 0
	for {
		line, err := readLine(br)
		if err == io.EOF {
			return n, nil
		}
		lineNo := n + 1
		broken := func(reason string) error { return &ChainError{Line: lineNo, Reason: reason, err: ErrChainBroken} }
		switch {
		case errors.Is(err, errTorn):
			return n, broken("no final newline (a torn write)")
		case errors.Is(err, errLong):
			return n, broken(fmt.Sprintf("longer than %d bytes", maxLine))
		case err != nil:
			return n, fmt.Errorf("audit: read line %d: %w", lineNo, err)
		}
		e, err := parseLine(line)
		if err != nil {
			return n, broken(err.Error())
		}
		if e.Seq != seq+1 {
			return n, broken(fmt.Sprintf("seq %d follows seq %d (line missing or out of order)", e.Seq, seq))
		}
		if e.Prev != prev {
			return n, broken("prev does not match the previous line's hash (previous line altered, removed or reordered)")
		}
		if each != nil {
			if err := each(lineNo, e); err != nil {
				return n, err
			}
		}
		prev, seq, n = e.Hash, e.Seq, n+1
	}
}

var (
	errTorn = errors.New("torn line")
	errLong = errors.New("line too long")
)

// readLine returns the next line without its newline; io.EOF at a clean
// end, errTorn for a last line without newline, errLong past maxLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine+1 {
			return nil, errLong
		}
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF:
			if len(line) == 0 {
				return nil, io.EOF
			}
			return nil, errTorn
		default:
			return nil, err
		}
	}
}

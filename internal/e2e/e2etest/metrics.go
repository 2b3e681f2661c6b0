package e2etest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/decryptd/decryptd/internal/testutil/daemonproc"
)

// Metrics is one scrape of /metrics in the text format: a sample a line,
// as written (a histogram's name_count, name_sum and name_bucket apart).
type Metrics []Sample

// Sample is one line of the text format.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Scrape GETs http://addr/metrics (bounded by daemonproc.HTTPGet's 5 s)
// and parses it.
func Scrape(ctx context.Context, addr string) (Metrics, error) {
	resp, err := daemonproc.HTTPGet(ctx, "http://"+addr+"/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return ParseMetrics(string(body))
}

// Has reports whether any sample of the metric exists.
func (ms Metrics) Has(name string) bool {
	for _, s := range ms {
		if s.Name == name {
			return true
		}
	}
	return false
}

// Sum adds the samples of the metric whose labels include the given
// name, value pairs.
func (ms Metrics) Sum(name string, labels ...string) float64 {
	total := 0.0
next:
	for _, s := range ms {
		if s.Name != name {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if s.Labels[labels[i]] != labels[i+1] {
				continue next
			}
		}
		total += s.Value
	}
	return total
}

// ParseMetrics reads the Prometheus text format: comment lines are skipped,
// every other line is name{labels} value [timestamp].
func ParseMetrics(text string) (Metrics, error) {
	var out Metrics
	for ln, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		s := Sample{Labels: map[string]string{}}
		rest := line
		if i := strings.IndexAny(line, "{ "); i > 0 && line[i] == '{' {
			s.Name = line[:i]
			j, err := parseLabels(line[i+1:], s.Labels)
			if err != nil {
				return nil, fmt.Errorf("metrics line %d: %w", ln+1, err)
			}
			rest = line[i+1+j:]
		} else if i > 0 {
			s.Name, rest = line[:i], line[i:]
		} else {
			return nil, fmt.Errorf("metrics line %d: no value", ln+1)
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("metrics line %d: no value", ln+1)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %w", ln+1, err)
		}
		s.Value = v
		out = append(out, s)
	}
	return out, nil
}

// parseLabels reads `k="v",k2="v2"}` into m and returns the bytes read.
func parseLabels(s string, m map[string]string) (int, error) {
	i := 0
	for {
		if i < len(s) && s[i] == '}' {
			return i + 1, nil
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 || i+eq+1 >= len(s) || s[i+eq+1] != '"' {
			return 0, errors.New("bad label")
		}
		name := strings.TrimSpace(s[i : i+eq])
		i += eq + 2
		var v strings.Builder
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					v.WriteByte('\n')
				default:
					v.WriteByte(s[i])
				}
				continue
			}
			v.WriteByte(s[i])
		}
		if i >= len(s) {
			return 0, errors.New("unterminated label value")
		}
		m[name] = v.String()
		i++ // closing quote
		if i < len(s) && s[i] == ',' {
			i++
		}
	}
}

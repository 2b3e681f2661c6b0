package config

import (
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// keysAtLine maps each line of a YAML document to the paths of the keys
// (and list items) written on it, in document order: "mqtt.tls.ca_file",
// "sinks[1]", "sinks[1].url".
func keysAtLine(data []byte) map[int][]string {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return nil
	}
	out := map[int][]string{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				out[k.Line] = append(out[k.Line], p)
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, it := range n.Content {
				p := path + "[" + strconv.Itoa(i) + "]"
				out[it.Line] = append(out[it.Line], p)
				walk(it, p)
			}
		}
	}
	walk(doc.Content[0], "")
	return out
}

var (
	lineRef     = regexp.MustCompile(`line (\d+): `)
	entryPrefix = regexp.MustCompile(`^[a-z_]+\[\d+\]: `)
)

// withKeyPaths turns the decoder's "yaml: line N: problem; line M: ..."
// into a *ValidationError whose fields are key paths ("mqtt.bogus (line
// 3)"), as Validate's errors name them; an unknown key's path ends in the
// unknown key. An error without line numbers is returned as it is.
func withKeyPaths(err error, data []byte) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if m := entryPrefix.FindString(msg); m != "" {
		msg = msg[len(m):] // "sinks[1]: yaml: line 9: ...": the line names the key
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	parts := strings.Split(msg, "; ")
	paths := keysAtLine(data)
	var probs []FieldError
	for _, part := range parts {
		m := lineRef.FindStringSubmatchIndex(part)
		if m == nil || m[0] != 0 {
			return err
		}
		n, _ := strconv.Atoi(part[m[2]:m[3]])
		field := "line " + strconv.Itoa(n)
		problem := part[m[1]:]
		if p := pathFor(paths[n], problem); p != "" {
			field = p + " (" + field + ")"
		}
		probs = append(probs, FieldError{Field: field, Problem: problem})
	}
	return &ValidationError{Problems: probs}
}

// pathFor picks, among the paths on a line, the one a problem is about:
// for an unknown key, the path ending in it; otherwise the first key
// written on the line (a list item's first key rather than the item).
func pathFor(paths []string, problem string) string {
	if name, ok := strings.CutPrefix(problem, "unknown key "); ok {
		if n, err := strconv.Unquote(name); err == nil {
			for _, p := range paths {
				if strings.HasSuffix(p, "."+n) || p == n {
					return p
				}
			}
		}
	}
	for _, p := range paths {
		if !strings.HasSuffix(p, "]") {
			return p
		}
	}
	if len(paths) > 0 {
		return paths[0]
	}
	return ""
}

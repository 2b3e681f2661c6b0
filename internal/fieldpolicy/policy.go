package fieldpolicy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/decryptd/decryptd/internal/fieldpolicy/pointer"
	"github.com/decryptd/decryptd/internal/sink"
)

// Action is what a rule does to a value.
type Action string

// Actions.
const (
	Keep         Action = "keep"
	Drop         Action = "drop"
	Mask         Action = "mask"
	Pseudonymize Action = "pseudonymize"
)

// AuditAction is the audit log action of the events that record a policy
// in force at start.
const AuditAction = "field_policy"

// MaskText replaces a masked value.
const MaskText = "***"

// ErrPolicy wraps errors of Validate.
var ErrPolicy = errors.New("field policy")

func (a Action) valid() bool { return a == Keep || a == Drop || a == Mask || a == Pseudonymize }

// Rule is one pointer and its action.
type Rule struct {
	Pointer string `yaml:"pointer" json:"pointer"`
	Action  Action `yaml:"action" json:"action"`
}

// Config is one sink's policy (the key policy under a sink).
type Config struct {
	Rules []Rule `yaml:"rules,omitempty" json:"rules,omitempty"`
	// Encrypted is the action for values that arrived encrypted and that
	// no rule names (default keep).
	Encrypted Action `yaml:"encrypted,omitempty" json:"encrypted,omitempty"`
	// PseudonymKey names the pseudonymization key (key id
	// pseudonym/<name>); required when any action is pseudonymize.
	PseudonymKey string `yaml:"pseudonym_key,omitempty" json:"pseudonym_key,omitempty"`
}

// IsZero reports whether c changes nothing.
func (c Config) IsZero() bool { return len(c.Rules) == 0 && c.Encrypted == "" && c.PseudonymKey == "" }

// NeedsPseudonyms reports whether some action is pseudonymize.
func (c Config) NeedsPseudonyms() bool {
	if c.Encrypted == Pseudonymize {
		return true
	}
	for _, r := range c.Rules {
		if r.Action == Pseudonymize {
			return true
		}
	}
	return false
}

// Validate checks the policy, naming the field at fault (rules[2].pointer).
func (c Config) Validate() error {
	seen := map[string]int{}
	for i, r := range c.Rules {
		p, err := pointer.Parse(r.Pointer)
		switch {
		case err != nil:
			return fmt.Errorf("%w: rules[%d].pointer: %w", ErrPolicy, i, err)
		case len(p.Tokens) == 0:
			return fmt.Errorf("%w: rules[%d].pointer: the whole record cannot be a rule's target", ErrPolicy, i)
		case p.Tokens[0] == "id":
			return fmt.Errorf("%w: rules[%d].pointer: /id cannot be changed (sinks deduplicate by it)", ErrPolicy, i)
		case !r.Action.valid():
			return fmt.Errorf("%w: rules[%d].action: %q: want keep, drop, mask or pseudonymize", ErrPolicy, i, r.Action)
		}
		if j, ok := seen[r.Pointer]; ok {
			return fmt.Errorf("%w: rules[%d].pointer: %s repeats rules[%d]", ErrPolicy, i, r.Pointer, j)
		}
		seen[r.Pointer] = i
	}
	if c.Encrypted != "" && !c.Encrypted.valid() {
		return fmt.Errorf("%w: encrypted: %q: want keep, drop, mask or pseudonymize", ErrPolicy, c.Encrypted)
	}
	if c.NeedsPseudonyms() && c.PseudonymKey == "" {
		return fmt.Errorf("%w: pseudonym_key: required by pseudonymize", ErrPolicy)
	}
	if c.PseudonymKey != "" && strings.Trim(c.PseudonymKey, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
		return fmt.Errorf("%w: pseudonym_key: %q: want A-Z a-z 0-9 . _ -", ErrPolicy, c.PseudonymKey)
	}
	return nil
}

// Describe returns the policy as one line of canonical JSON, for the
// audit log: rules in order, the encrypted default made explicit.
func (c Config) Describe() string {
	d := c
	if d.Encrypted == "" {
		d.Encrypted = Keep
	}
	b, _ := json.Marshal(d)
	return string(b)
}

// Pseudonymizer turns a value into its token; package pseudonym's does
// HMAC-SHA-256 under the current pseudonymization key.
type Pseudonymizer interface {
	Pseudonymize(ctx context.Context, value []byte) (string, error)
}

// Policy is a validated Config ready to apply.
type Policy struct {
	rules     []rule
	encrypted Action
	pseudo    Pseudonymizer
	envelope  bool // a rule targets device_id, key_id or key_version
}

type rule struct {
	tok    []string
	action Action
	wild   int // wildcards: fewer is more specific
}

// New validates c. ps may be nil when no action is pseudonymize.
func New(c Config, ps Pseudonymizer) (*Policy, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.NeedsPseudonyms() && ps == nil {
		return nil, fmt.Errorf("%w: pseudonymize needs a pseudonymization key", ErrPolicy)
	}
	p := &Policy{encrypted: c.Encrypted, pseudo: ps}
	if p.encrypted == "" {
		p.encrypted = Keep
	}
	for _, r := range c.Rules {
		pt := pointer.MustParse(r.Pointer)
		w := 0
		for _, t := range pt.Tokens {
			if t == pointer.Wildcard {
				w++
			}
		}
		p.rules = append(p.rules, rule{tok: pt.Tokens, action: r.Action, wild: w})
		switch pt.Tokens[0] {
		case "device_id", "key_id", "key_version":
			p.envelope = true
		}
	}
	return p, nil
}

// step is one token of a value's path; idx is set for array elements.
type step struct {
	name  string
	isIdx bool
}

// match reports whether r names exactly the value at path.
func (r rule) match(path []step) bool {
	if len(r.tok) != len(path) {
		return false
	}
	return r.prefixOf(path)
}

// prefixOf reports whether r's tokens match the first len(r.tok) steps.
func (r rule) prefixOf(path []step) bool {
	if len(r.tok) > len(path) {
		return false
	}
	for i, t := range r.tok {
		if t == path[i].name || (t == pointer.Wildcard && path[i].isIdx) {
			continue
		}
		return false
	}
	return true
}

// below reports whether r names something strictly inside the value at
// path.
func (r rule) below(path []step) bool {
	if len(r.tok) <= len(path) {
		return false
	}
	for i, s := range path {
		if r.tok[i] != s.name && !(r.tok[i] == pointer.Wildcard && s.isIdx) {
			return false
		}
	}
	return true
}

// Apply returns rec with the policy applied (a new JSON buffer; rec is
// not modified).
func (p *Policy) Apply(ctx context.Context, rec sink.Record) (sink.Record, error) {
	root, err := parse(rec.JSON)
	if err != nil {
		return sink.Record{}, fmt.Errorf("record %q: %w: %w", rec.ID, sink.ErrBadRecord, err)
	}
	if root.kind != '{' {
		return sink.Record{}, fmt.Errorf("record %q: not an object: %w", rec.ID, sink.ErrBadRecord)
	}
	var sealed [][]step
	for _, s := range rec.Sealed {
		pt, err := pointer.Parse(s)
		if err != nil {
			return sink.Record{}, fmt.Errorf("record %q: sealed pointer: %w", rec.ID, err)
		}
		path := []step{{name: "data"}}
		for _, t := range pt.Tokens {
			path = append(path, step{name: t})
		}
		sealed = append(sealed, path)
	}
	a := applier{p: p, ctx: ctx, sealed: sealed}
	out, keep, err := a.walk(root, nil, "", -1, false)
	if err != nil {
		return sink.Record{}, fmt.Errorf("record %q: %w", rec.ID, err)
	}
	if !keep {
		out = &node{kind: '{'}
	}
	res := rec
	res.JSON = out.append(make([]byte, 0, len(rec.JSON)))
	res.Sealed = nil
	if p.envelope {
		res.DeviceID = out.memberString("device_id")
		res.KeyID = out.memberString("key_id")
		res.KeyVersion = out.memberString("key_version")
	}
	return res, nil
}

type applier struct {
	p      *Policy
	ctx    context.Context
	sealed [][]step
}

// sealedRoot returns the depth at which the value at path is inside a
// sealed value (the sealed value's own depth), or -1.
func (a *applier) sealedRoot(path []step) int {
	best := -1
	for _, s := range a.sealed {
		if len(s) > len(path) {
			continue
		}
		ok := true
		for i := range s {
			// A sealed pointer names array elements by index.
			if s[i].name != path[i].name {
				ok = false
				break
			}
		}
		if ok && len(s) > best {
			best = len(s)
		}
	}
	return best
}

func (a *applier) sealedBelow(path []step) bool {
	for _, s := range a.sealed {
		if len(s) <= len(path) {
			continue
		}
		ok := true
		for i := range path {
			if s[i].name != path[i].name {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// walk applies the policy to n at path. inherited is the action of the
// nearest ancestor rule and inhDepth its depth (-1: none). It returns the
// new node and whether it stays.
func (a *applier) walk(n *node, path []step, inherited Action, inhDepth int, _ bool) (*node, bool, error) {
	var explicit *rule
	for i := range a.p.rules {
		r := &a.p.rules[i]
		if len(path) > 0 && r.match(path) && (explicit == nil || r.wild < explicit.wild) {
			explicit = r
		}
	}
	sroot := a.sealedRoot(path)
	action := Keep
	switch {
	case explicit != nil:
		action, inherited, inhDepth = explicit.action, explicit.action, len(path)
	case inhDepth >= 0 && (sroot < 0 || inhDepth >= sroot):
		action = inherited
	case sroot >= 0:
		action = a.p.encrypted
	}
	if n.kind == '{' || n.kind == '[' {
		deeper := a.sealedBelow(path)
		for i := range a.p.rules {
			if a.p.rules[i].below(path) {
				deeper = true
				break
			}
		}
		if deeper {
			out := &node{kind: n.kind}
			for i, child := range n.kids {
				st := step{name: strconv.Itoa(i), isIdx: true}
				if n.kind == '{' {
					st = step{name: n.keys[i]}
				}
				cp := append(slices.Clip(path), st)
				inh, d := inherited, inhDepth
				if explicit == nil && inhDepth < 0 && sroot >= 0 {
					// Inside a sealed value nothing names: its default
					// reaches its members too, unless a rule says more.
					inh, d = a.p.encrypted, len(path)
				}
				c, keep, err := a.walk(child, cp, inh, d, false)
				if err != nil {
					return nil, false, err
				}
				if keep {
					out.kids = append(out.kids, c)
					if n.kind == '{' {
						out.keys, out.rawKeys = append(out.keys, n.keys[i]), append(out.rawKeys, n.rawKeys[i])
					}
				}
			}
			return out, true, nil
		}
	}
	switch action {
	case Keep:
		return n, true, nil
	case Drop:
		return nil, false, nil
	case Mask:
		return &node{kind: '"', raw: []byte(`"` + MaskText + `"`)}, true, nil
	case Pseudonymize:
		var in []byte
		if n.kind == '"' {
			var s string
			if err := json.Unmarshal(n.raw, &s); err != nil {
				return nil, false, err
			}
			in = append([]byte{'s'}, s...)
		} else {
			in = append([]byte{'j'}, n.append(nil)...)
		}
		tok, err := a.p.pseudo.Pseudonymize(a.ctx, in)
		clear(in)
		if err != nil {
			return nil, false, fmt.Errorf("pseudonymize: %w", err)
		}
		b, _ := json.Marshal(tok)
		return &node{kind: '"', raw: b}, true, nil
	}
	return nil, false, fmt.Errorf("unknown action %q", action)
}

// node is one JSON value, member order kept; scalars and member names keep
// their text as written.
type node struct {
	kind    byte // '{', '[', '"', or 'v' (number, true, false, null)
	raw     []byte
	keys    []string // unescaped member names (objects)
	rawKeys [][]byte // the same as written, quotes included
	kids    []*node
}

func (n *node) memberString(name string) string {
	for i, k := range n.keys {
		if k == name && n.kids[i].kind == '"' {
			var s string
			if json.Unmarshal(n.kids[i].raw, &s) == nil {
				return s
			}
		}
	}
	return ""
}

func (n *node) append(dst []byte) []byte {
	switch n.kind {
	case '{':
		dst = append(dst, '{')
		for i := range n.keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, n.rawKeys[i]...)
			dst = append(dst, ':')
			dst = n.kids[i].append(dst)
		}
		return append(dst, '}')
	case '[':
		dst = append(dst, '[')
		for i, c := range n.kids {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = c.append(dst)
		}
		return append(dst, ']')
	}
	return append(dst, n.raw...)
}

// maxDepth bounds nesting (the decrypt stage allows 1000).
const maxDepth = 1000

var errSyntax = errors.New("not valid JSON")

// parse reads one JSON value (records come from the decrypt stage, which
// checked them strictly; this parser refuses what it does not understand
// and never panics).
func parse(data []byte) (*node, error) {
	p := parser{data: data}
	n, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.i != len(data) {
		return nil, errors.New("trailing data after the JSON value")
	}
	return n, nil
}

type parser struct {
	data []byte
	i    int
}

func (p *parser) space() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// str returns the raw span of the string starting at p.i (quotes
// included) and whether it holds an escape.
func (p *parser) str() ([]byte, bool, error) {
	start := p.i
	p.i++
	esc := false
	for p.i < len(p.data) {
		switch c := p.data[p.i]; {
		case c == '"':
			p.i++
			return p.data[start:p.i], esc, nil
		case c == '\\':
			esc = true
			p.i += 2
		case c < 0x20:
			return nil, false, errSyntax
		default:
			p.i++
		}
	}
	return nil, false, errSyntax
}

func (p *parser) value(depth int) (*node, error) {
	if depth > maxDepth {
		return nil, errors.New("nested too deep")
	}
	p.space()
	if p.i >= len(p.data) {
		return nil, errSyntax
	}
	switch c := p.data[p.i]; c {
	case '{':
		p.i++
		n := &node{kind: '{'}
		p.space()
		if p.i < len(p.data) && p.data[p.i] == '}' {
			p.i++
			return n, nil
		}
		for {
			p.space()
			if p.i >= len(p.data) || p.data[p.i] != '"' {
				return nil, errSyntax
			}
			rk, esc, err := p.str()
			if err != nil {
				return nil, err
			}
			if !utf8.Valid(rk) {
				return nil, errSyntax
			}
			k := string(rk[1 : len(rk)-1])
			if esc {
				if err := json.Unmarshal(rk, &k); err != nil {
					return nil, errSyntax
				}
			}
			p.space()
			if p.i >= len(p.data) || p.data[p.i] != ':' {
				return nil, errSyntax
			}
			p.i++
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			n.keys, n.rawKeys, n.kids = append(n.keys, k), append(n.rawKeys, rk), append(n.kids, v)
			p.space()
			if p.i >= len(p.data) {
				return nil, errSyntax
			}
			if p.data[p.i] == '}' {
				p.i++
				return n, nil
			}
			if p.data[p.i] != ',' {
				return nil, errSyntax
			}
			p.i++
		}
	case '[':
		p.i++
		n := &node{kind: '['}
		p.space()
		if p.i < len(p.data) && p.data[p.i] == ']' {
			p.i++
			return n, nil
		}
		for {
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			n.kids = append(n.kids, v)
			p.space()
			if p.i >= len(p.data) {
				return nil, errSyntax
			}
			if p.data[p.i] == ']' {
				p.i++
				return n, nil
			}
			if p.data[p.i] != ',' {
				return nil, errSyntax
			}
			p.i++
		}
	case '"':
		raw, esc, err := p.str()
		if err != nil {
			return nil, err
		}
		if (esc && !json.Valid(raw)) || !utf8.Valid(raw) {
			return nil, errSyntax
		}
		return &node{kind: '"', raw: raw}, nil
	default:
		start := p.i
		for p.i < len(p.data) {
			switch p.data[p.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				goto end
			}
			p.i++
		}
	end:
		raw := p.data[start:p.i]
		if len(raw) == 0 || !json.Valid(raw) {
			return nil, errSyntax
		}
		return &node{kind: 'v', raw: raw}, nil
	}
}

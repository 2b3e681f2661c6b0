package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

var (
	durationType = reflect.TypeOf(time.Duration(0))
	secretType   = reflect.TypeOf(Secret{})
)

// envField is one overridable key: its YAML path and where it lives.
type envField struct {
	path string // mqtt.client_id
	name string // DECRYPTD_MQTT_CLIENT_ID
	v    reflect.Value
}

// envName turns a YAML path into its environment variable name.
func envName(path string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// envFields walks the struct behind v and lists every scalar and list of
// strings. Lists of structs (sinks) are skipped: an item has no stable name.
func envFields(v reflect.Value, prefix string, out *[]envField) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		path := tag
		if prefix != "" {
			path = prefix + "." + tag
		}
		fv := v.Field(i)
		switch {
		case f.Type == secretType || f.Type == durationType:
			*out = append(*out, envField{path, envName(path), fv})
		case f.Type.Kind() == reflect.Struct:
			envFields(fv, path, out)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() != reflect.String:
			// sinks: not overridable item by item.
		default:
			*out = append(*out, envField{path, envName(path), fv})
		}
	}
}

// EnvNames lists every environment override with the key it sets, sorted by
// name ("DECRYPTD_MQTT_CLIENT_ID=mqtt.client_id").
func EnvNames() []string {
	var fs []envField
	envFields(reflect.ValueOf(&Config{}).Elem(), "", &fs)
	out := make([]string, 0, len(fs))
	for _, f := range fs {
		out = append(out, f.name+"="+f.path)
	}
	sort.Strings(out)
	return out
}

// applyEnv sets every key whose variable env has. An error names the
// variable and the key, and never quotes the value of a Secret.
func applyEnv(c *Config, env func(string) (string, bool)) error {
	var fs []envField
	envFields(reflect.ValueOf(c).Elem(), "", &fs)
	for _, f := range fs {
		s, ok := env(f.name)
		if !ok {
			continue
		}
		if err := setFromString(f.v, s); err != nil {
			return fmt.Errorf("%s (%s): %w", f.name, f.path, err)
		}
	}
	return nil
}

func setFromString(v reflect.Value, s string) error {
	switch {
	case v.Type() == secretType:
		v.Set(reflect.ValueOf(NewSecret(s)))
		return nil
	case v.Type() == durationType:
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("want a duration such as 30s or 5m, got %q", clip(s))
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("want true or false, got %q", clip(s))
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil || v.OverflowInt(n) {
			return fmt.Errorf("want an integer, got %q", clip(s))
		}
		v.SetInt(n)
	case reflect.Uint64:
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return fmt.Errorf("want a non-negative integer, got %q", clip(s))
		}
		v.SetUint(n)
	case reflect.Float64:
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return fmt.Errorf("want a number, got %q", clip(s))
		}
		v.SetFloat(f)
	case reflect.Pointer:
		if v.Type().Elem().Kind() != reflect.Bool {
			return fmt.Errorf("unsupported type %s", v.Type())
		}
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("want true or false, got %q", clip(s))
		}
		v.Set(reflect.ValueOf(&b))
	case reflect.Slice:
		var items []string
		for _, it := range strings.Split(s, ",") {
			if it = strings.TrimSpace(it); it != "" {
				items = append(items, it)
			}
		}
		v.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}

// clip bounds user text quoted in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// EnvTestPrefix starts the names reserved for test harnesses
// (DECRYPTD_TEST_PG_DSN): CheckEnv lets them pass.
const EnvTestPrefix = EnvPrefix + "TEST_"

// CheckEnv refuses an environment that holds a DECRYPTD_* variable that
// sets no configuration key, naming each (with the closest known name when
// one is near). It is an error, not a warning: an override that is
// silently ignored leaves the daemon running with a setting other than the
// one its operator wrote (rotation off, plaintext allowed), and a log line
// is easy to miss where a failed start is not. Recognised besides the
// keys: DECRYPTD_CONFIG, the variable kms.keyprotect.api_key_env names,
// and DECRYPTD_TEST_* (test harnesses). environ is os.Environ's form.
func CheckEnv(environ []string, c *Config) error {
	known := map[string]bool{EnvPrefix + "CONFIG": true}
	names := EnvNames()
	for i, n := range names {
		n, _, _ = strings.Cut(n, "=")
		names[i] = n
		known[n] = true
	}
	if c != nil && c.KMS.KeyProtect.APIKeyEnv != "" {
		known[c.KMS.KeyProtect.APIKeyEnv] = true
	}
	var probs []FieldError
	seen := map[string]bool{}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) || known[name] || seen[name] || strings.HasPrefix(name, EnvTestPrefix) {
			continue
		}
		seen[name] = true
		msg := "sets no configuration key (config.example.yaml lists them; DECRYPTD_<KEY_PATH>)"
		if near := closest(name, names); near != "" {
			msg = fmt.Sprintf("sets no configuration key; did you mean %s?", near)
		}
		probs = append(probs, FieldError{Field: "environment " + clip(name), Problem: msg})
	}
	if len(probs) == 0 {
		return nil
	}
	sort.Slice(probs, func(i, j int) bool { return probs[i].Field < probs[j].Field })
	return &ValidationError{Problems: probs}
}

// closest returns the name of names nearest to s by edit distance, if it
// is within three edits.
func closest(s string, names []string) string {
	best, bestD := "", 4
	for _, n := range names {
		if d := editDistance(s, n, bestD); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, or limit when it is
// at least limit.
func editDistance(a, b string, limit int) int {
	if d := len(a) - len(b); d >= limit || -d >= limit {
		return limit
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], limit)
}

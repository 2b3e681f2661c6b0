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

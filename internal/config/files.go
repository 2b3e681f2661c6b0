package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"

	"github.com/decryptd/decryptd/internal/fileperm"
	"github.com/decryptd/decryptd/internal/sink"
)

// fileRole says what decryptd does with a file the configuration names,
// and so which checks apply.
type fileRole int

const (
	roleSecret  fileRole = iota // read; a key or credential (fileperm.Secret)
	rolePublic                  // read; a CA bundle or certificate (fileperm.Public)
	roleOutput                  // written, appended to; may not exist yet (fileperm.Private)
	roleStore                   // the registry file: written, may not exist yet; holds only wrapped DEKs
	roleRootKey                 // read; the local root key: its owner only (package kms/local refuses more)
)

type namedFile struct {
	field string
	path  string
	role  fileRole
}

// files lists every file the configuration names, with the key that
// names it.
func (c *Config) files() []namedFile {
	var out []namedFile
	add := func(field, path string, role fileRole) {
		if path != "" {
			out = append(out, namedFile{field, path, role})
		}
	}
	tls := func(prefix string, t TLS) {
		add(prefix+".ca_file", t.CAFile, rolePublic)
		add(prefix+".cert_file", t.CertFile, rolePublic)
		add(prefix+".key_file", t.KeyFile, roleSecret)
	}
	tls("mqtt.tls", c.MQTT.TLS)
	if c.Input.Type == InputKafka {
		k := c.Kafka
		add("kafka.tls.ca_file", k.TLS.CAFile, rolePublic)
		add("kafka.tls.cert_file", k.TLS.CertFile, rolePublic)
		add("kafka.tls.key_file", k.TLS.KeyFile, roleSecret)
		add("kafka.sasl.secret_file", k.SASL.SecretFile, roleSecret)
	}
	switch c.KMS.Provider {
	case ProviderLocal:
		add("kms.local.root_key_file", c.KMS.Local.RootKeyFile, roleRootKey)
	case ProviderKeyProtect:
		add("kms.keyprotect.api_key_file", c.KMS.KeyProtect.APIKeyFile, roleSecret)
		add("kms.keyprotect.ca_file", c.KMS.KeyProtect.CAFile, rolePublic)
	}
	if c.Registry.Driver == DriverFile {
		add("registry.path", c.Registry.Path, roleStore)
	}
	for i, s := range c.Sinks {
		for _, f := range sinkFiles(s.Config) {
			add(fmt.Sprintf("sinks[%d].%s", i, f.key), f.path, roleOfSinkKey(f.key))
		}
	}
	if c.DeadLetter.Type == SinkFile {
		add("dead_letter.path", c.DeadLetter.Path, roleOutput)
	}
	tls("dead_letter.tls", c.DeadLetter.TLS)
	add("audit.path", c.Audit.Path, roleOutput)
	return out
}

// CheckFiles checks the files the configuration names, as `decryptd
// check-config` does after Validate: what decryptd reads must exist, be a
// regular file it can read, and have a safe mode (a secret readable by no
// one but its owner and group, a certificate writable by no other user);
// what it writes must, if it exists, be a regular file that its group and
// others cannot access (decryptd refuses it otherwise, see package
// fileperm), and if not, have a directory decryptd can create it in. It
// returns a *ValidationError naming each key at fault, or nil.
func (c *Config) CheckFiles() error {
	var ck checker
	for _, f := range c.files() {
		if p := checkFile(f); p != "" {
			ck.add(f.field, "%s", p)
		}
	}
	if p := c.Spool.checkDir(); p != "" {
		ck.add("spool.dir", "%s", p)
	}
	if len(ck.probs) == 0 {
		return nil
	}
	return &ValidationError{Problems: ck.probs}
}

func checkFile(f namedFile) string {
	fi, err := os.Stat(f.path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && (f.role == roleOutput || f.role == roleStore):
		return checkCreatable(f.path)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("%s does not exist", f.path)
	case err != nil:
		return err.Error()
	case !fi.Mode().IsRegular():
		return fmt.Sprintf("%s is not a regular file (%s)", f.path, fi.Mode().Type())
	}
	var rule error
	switch f.role {
	case roleSecret:
		rule = fileperm.Secret(f.path, fi.Mode())
	case rolePublic:
		rule = fileperm.Public(f.path, fi.Mode())
	case roleOutput:
		rule = fileperm.Private(f.path, fi.Mode())
	case roleRootKey:
		if p := fi.Mode().Perm(); p&0o077 != 0 {
			return fmt.Sprintf("%s: mode %04o: the local root key file must be accessible to its owner only (chmod 600 %s); the local KMS refuses it otherwise", f.path, p, f.path)
		}
	}
	if rule != nil {
		return rule.Error()
	}
	flag := os.O_RDONLY
	if f.role == roleOutput || f.role == roleStore {
		flag = os.O_WRONLY | os.O_APPEND
	}
	h, err := os.OpenFile(f.path, flag, 0)
	if err != nil {
		return fmt.Sprintf("%s: cannot be opened by this user (uid %d): %v", f.path, os.Geteuid(), errors.Unwrap(err))
	}
	h.Close()
	return ""
}

// checkCreatable reports whether a file can be made at path: its nearest
// existing ancestor must be a directory this user can write in (the file
// sink creates missing directories).
func checkCreatable(path string) string {
	dir := filepath.Dir(path)
	for {
		fi, err := os.Stat(dir)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Sprintf("%s: %s is not a directory", path, dir)
			}
			if syscall.Access(dir, 2 /* W_OK */) != nil {
				return fmt.Sprintf("%s does not exist and directory %s is not writable by this user (uid %d)", path, dir, os.Geteuid())
			}
			return ""
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err.Error()
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return fmt.Sprintf("%s: no directory of it exists", path)
		}
		dir = parent
	}
}

type sinkFile struct{ key, path string }

// sinkFiles lists the files a sink type's configuration names, whatever
// the type: the fields its ResolvePaths hands over, named by their YAML
// keys ("path", "tls.key_file"), found by address in the config struct.
func sinkFiles(cfg sink.Config) []sinkFile {
	pr, ok := cfg.(sink.PathResolver)
	if !ok {
		return nil
	}
	named := map[*string]bool{}
	pr.ResolvePaths(func(p *string) { named[p] = true })
	v := reflect.ValueOf(cfg)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	var out []sinkFile
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" || !t.Field(i).IsExported() {
				continue
			}
			f := v.Field(i)
			switch {
			case f.Kind() == reflect.String && f.CanAddr():
				if p := f.Addr().Interface().(*string); named[p] && *p != "" {
					out = append(out, sinkFile{prefix + tag, *p})
				}
			case f.Kind() == reflect.Struct:
				walk(f, prefix+tag+".")
			}
		}
	}
	walk(v.Elem(), "")
	return out
}

// roleOfSinkKey says how a file a sink names is checked, by its key:
// "path" is written (a file sink's records); keys and credentials
// (key_file, *auth*, *secret*, *password*, *token*) are secrets; the rest
// (ca_file, cert_file) are public inputs.
func roleOfSinkKey(key string) fileRole {
	last := key[strings.LastIndex(key, ".")+1:]
	switch {
	case last == "path":
		return roleOutput
	case strings.HasSuffix(last, "key_file") || strings.Contains(last, "auth") || strings.Contains(last, "secret") ||
		strings.Contains(last, "password") || strings.Contains(last, "token"):
		return roleSecret
	}
	return rolePublic
}

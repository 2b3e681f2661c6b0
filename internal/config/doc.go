// Package config owns decryptd's one configuration file, shared by the
// daemon and dekctl: its schema, defaults, environment overrides and
// validation.
//
// Loading is strict and happens in a fixed order:
//
//  1. The YAML is decoded with unknown keys rejected (a misspelt key is an
//     error, never silently ignored) and exactly one document allowed. Each
//     sinks entry is decoded by the sink type its type names, from the
//     registry of package sinktypes (ParseWith takes another): name, type
//     and policy (a field policy, package fieldpolicy, decoded as strictly)
//     are common, every other key is the type's own (sink.Config).
//  2. Environment overrides are applied: every scalar key, and every list of
//     strings, can be set by DECRYPTD_ followed by its path upper-cased with
//     "." replaced by "_" (mqtt.client_id is DECRYPTD_MQTT_CLIENT_ID,
//     kms.keyprotect.api_key_file is DECRYPTD_KMS_KEYPROTECT_API_KEY_FILE).
//     Lists of strings take comma-separated values (DECRYPTD_MQTT_BROKERS).
//     The sinks list is not overridable item by item. EnvNames lists them all.
//  3. Defaults fill what is still unset (zero): see Default; each sink's
//     own keys get its type's defaults (sink.Config.Defaults).
//  4. Relative paths are resolved against the config file's directory (Load
//     only; Parse leaves them as written), so dekctl and the daemon agree
//     wherever they are started from.
//  5. Validate checks everything it can without touching the network or the
//     files named (those are checked by the parts that open them) and names
//     each field at fault, e.g. "sinks[1].path: required for type file".
//
// Secrets never live in the file: it names a file or an environment variable
// that holds them (kms.keyprotect.api_key_file / api_key_env, a sink's
// auth_header_file). A value that is or may contain a secret (the registry
// DSN, which may carry a password, and anything read through Resolve...)
// has type Secret, which prints as "<secret>" in every format, so a Config
// can be logged or printed with %+v safely. A password written into
// registry.dsn in the file itself is refused; pass it through
// DECRYPTD_REGISTRY_DSN or PostgreSQL's own PGPASSWORD / PGPASSFILE.
//
// A Config is plain data; after Load it is not modified, so it may be read
// from several goroutines.
package config

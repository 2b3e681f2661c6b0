// Package dek holds the vocabulary shared by everything that handles data
// encryption keys: the name of a DEK version (key id plus key version), the
// lifecycle states a version moves through, and the sentinel errors of a key
// lookup that the decryption core turns into the spec's failure reasons.
//
// It owns no behaviour beyond that, so that the decryption core, the key
// cache, the registry and the KMS providers can agree on these names without
// importing one another.
package dek

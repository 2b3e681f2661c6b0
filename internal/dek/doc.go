// Package dek holds the vocabulary shared by everything that handles data
// encryption keys: the name of a DEK version (key id plus key version), the
// lifecycle states a version moves through, the sentinel errors of a key
// lookup that the decryption core turns into the spec's failure reasons, and
// the spec's names (names.go): the alphabets and lengths of device ids, key
// ids and key versions, and the device key id convention device/<device_id>
// (DeviceKeyID, DeviceOfKeyID), written once for every package.
//
// It owns no behaviour beyond that, so that the decryption core, the key
// cache, the registry and the KMS providers can agree on these names without
// importing one another.
package dek

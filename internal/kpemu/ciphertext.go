package kpemu

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
)

// Ciphertext: base64 of {"ciphertext","iv","version","handle"} like the
// real service, handle naming the key version; the key id is bound as GCM
// additional data rather than carried.

type ciphertextJSON struct {
	Ciphertext []byte `json:"ciphertext"`
	IV         []byte `json:"iv"`
	Version    string `json:"version"`
	Handle     string `json:"handle"`
}

var errCiphertext = errors.New("malformed ciphertext")

// parseCiphertext decodes the opaque wrap output.
func parseCiphertext(s string) (ciphertextJSON, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return ciphertextJSON{}, errCiphertext
	}
	var c ciphertextJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return ciphertextJSON{}, errCiphertext
	}
	if c.Version != ctFormat || c.Handle == "" || len(c.IV) != nonceSize || len(c.Ciphertext) < 16 {
		return ciphertextJSON{}, errCiphertext
	}
	return c, nil
}

func gcmAAD(keyID, versionID string, aad []string) []byte {
	parts := append([]string{wrapLabel, keyID, versionID}, aad...)
	b := binary.BigEndian.AppendUint32(nil, uint32(len(parts)))
	for _, p := range parts {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

func seal(keyID string, v keyVersion, plain []byte, aad []string) (string, error) {
	iv := make([]byte, nonceSize)
	if _, err := io.ReadFull(rand.Reader, iv); err != nil {
		return "", err
	}
	ct := v.aead.Seal(nil, iv, plain, gcmAAD(keyID, v.id, aad))
	b, err := json.Marshal(ciphertextJSON{Ciphertext: ct, IV: iv, Version: ctFormat, Handle: v.id})
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

func openCT(k *key, s string, aad []string) ([]byte, keyVersion, error) {
	c, err := parseCiphertext(s)
	if err != nil {
		return nil, keyVersion{}, err
	}
	v, ok := k.version(c.Handle)
	if !ok {
		return nil, keyVersion{}, errCiphertext
	}
	plain, err := v.aead.Open(nil, c.IV, c.Ciphertext, gcmAAD(k.id, v.id, aad))
	if err != nil {
		return nil, keyVersion{}, errCiphertext
	}
	return plain, v, nil
}

func validAAD(aad []string) bool {
	for _, a := range aad {
		if len(a) > maxAADEntry {
			return false
		}
	}
	return true
}

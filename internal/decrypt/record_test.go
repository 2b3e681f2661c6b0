package decrypt

import (
	"encoding/hex"
	"math/rand/v2"
	"testing"
)

func TestHexEncode(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for n := 4; n <= 64; n += 4 {
		for range 200 {
			src := make([]byte, n)
			for i := range src {
				src[i] = byte(rng.IntN(256))
			}
			dst := make([]byte, 2*n)
			hexEncode(dst, src)
			if want := hex.EncodeToString(src); string(dst) != want {
				t.Fatalf("hexEncode(%x) = %s", src, dst)
			}
		}
	}
}

// Package ids makes the random identifiers and secrets CortexOS hands out:
// instance suffixes, dev passwords and API keys. Job ids are UUIDv7s made by
// the gateway. It owns randomness only, never the meaning of an id.
package ids

import (
	"crypto/rand"
	"encoding/hex"
)

// Hex returns n random bytes from crypto/rand as 2n hex characters.
func Hex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}

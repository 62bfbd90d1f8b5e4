package ids

import "testing"

func TestHex(t *testing.T) {
	a, b := Hex(16), Hex(16)
	if len(a) != 32 || a == b {
		t.Fatalf("Hex(16) = %q then %q, want two different 32-character strings", a, b)
	}
}

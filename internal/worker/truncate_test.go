package worker

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTruncate(t *testing.T) {
	if got := truncate("short", 10); got != "short" {
		t.Errorf("truncate(short) = %q", got)
	}
	long := strings.Repeat("é", 40<<10) // 80 KiB of 2-byte runes
	got := truncate(long, maxErrorBytes)
	if len(got) > maxErrorBytes || !utf8.ValidString(got) || !strings.HasSuffix(got, "…(truncated)") {
		t.Errorf("truncate of 80 KiB: %d bytes, valid UTF-8 %v, suffix %q", len(got), utf8.ValidString(got), got[max(len(got)-20, 0):])
	}
}

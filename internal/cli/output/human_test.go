package output

import (
	"strings"
	"testing"
	"time"
)

func TestAge(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{
		0: "0s", 5 * time.Second: "5s", 59 * time.Second: "59s", time.Minute: "1m",
		3*time.Minute + 59*time.Second: "3m", 2 * time.Hour: "2h", 47 * time.Hour: "1d",
		4 * 24 * time.Hour: "4d", 400 * 24 * time.Hour: "1y", -time.Minute: "0s",
	} {
		if got := Age(now.Add(-d), now); got != want {
			t.Errorf("Age(now-%s) = %q, want %q", d, got, want)
		}
	}
	if got := Age(time.Time{}, now); got != "<unknown>" {
		t.Errorf("Age(zero) = %q", got)
	}
}

func TestTruncate(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"hello", 10, "hello"}, {"hello", 5, "hello"}, {"hello", 4, "hel…"},
		{"hello", 1, "…"}, {"hello", 0, ""}, {"héllo wörld", 6, "héllo…"}, {"", 3, ""},
	} {
		if got := Truncate(c.in, c.n); got != c.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

func TestElapsed(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0.0s", 3250 * time.Millisecond: "3.2s", 65 * time.Second: "1m05s",
		62 * time.Minute: "1h02m", -time.Second: "0.0s",
	} {
		if got := Elapsed(d); got != want {
			t.Errorf("Elapsed(%s) = %q, want %q", d, got, want)
		}
	}
}

func FuzzTruncate(f *testing.F) {
	f.Add("héllo", 3)
	f.Fuzz(func(t *testing.T, s string, n int) {
		n %= 100
		got := Truncate(s, n)
		if n >= 0 && len([]rune(got)) > n {
			t.Fatalf("Truncate(%q, %d) = %q is longer than %d", s, n, got, n)
		}
	})
}

func TestMaskKey(t *testing.T) {
	for in, want := range map[string]string{
		"":                            "",
		"ck_abcdef0123456789a1b2":     "ck_…a1b2",
		"cx_dev_0123456789abcdefa1b2": "cx_dev_…a1b2",
		"short":                       "…",
		"ck_short":                    "…",
		"0123456789abcdefa1b2":        "…a1b2",
	} {
		if got := MaskKey(in); got != want {
			t.Errorf("MaskKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzMaskKey(f *testing.F) {
	f.Add("cx_dev_0123456789abcdefa1b2")
	f.Fuzz(func(t *testing.T, key string) {
		got := MaskKey(key)
		if len(key) >= 8 && strings.Contains(got, key) {
			t.Fatalf("MaskKey(%q) = %q shows the whole key", key, got)
		}
	})
}

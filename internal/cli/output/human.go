package output

import (
	"fmt"
	"regexp"
	"time"
	"unicode/utf8"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Age is how long ago t was, relative to now, in kubectl's short form:
// "5s", "3m", "2h", "4d", "1y". A zero t is "<unknown>"; a t in the
// future (clock skew) is "0s".
func Age(t, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	case d < 365*24*time.Hour:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
	return fmt.Sprintf("%dy", int(d/(365*24*time.Hour)))
}

// Truncate shortens s to at most n characters, ending with "…" when it
// cut anything. It counts runes, so it never splits a character.
func Truncate(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// Elapsed is a running duration for progress lines: "3.2s" under a
// minute, then "1m05s", then "1h02m".
func Elapsed(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	case d >= time.Minute:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	}
	return fmt.Sprintf("%.1fs", float64(d.Truncate(100*time.Millisecond))/float64(time.Second))
}

// keyPrefix is a key's kind, like "ck_" or "cx_dev_", which is safe to show.
var keyPrefix = regexp.MustCompile(`^[a-z]+(?:_[a-z]+)*_`)

// MaskKey shows an API key without giving it away: its kind prefix, "…"
// and its last four characters ("ck_…a1b2"); a key with fewer than twelve
// characters after its prefix shows as "…" alone. "" stays "".
func MaskKey(key string) string {
	if key == "" {
		return ""
	}
	prefix := keyPrefix.FindString(key)
	rest := key[len(prefix):]
	if len(prefix) > 16 {
		prefix, rest = "", key
	}
	if utf8.RuneCountInString(rest) < 12 {
		return "…"
	}
	r := []rune(rest)
	return prefix + "…" + string(r[len(r)-4:])
}

// WorkerState is a worker's state as tables show it: live, draining.
func WorkerState(s cortexv1.WorkerState) string {
	switch s {
	case cortexv1.WorkerState_WORKER_STATE_LIVE:
		return "live"
	case cortexv1.WorkerState_WORKER_STATE_DRAINING:
		return "draining"
	}
	return "unknown"
}

package telemetry

import (
	"strings"
	"testing"
)

func TestRedactURLHidesSecrets(t *testing.T) {
	for _, tc := range []struct{ in, secret string }{
		{"nats://cortex:s3cret@127.0.0.1:4222", "s3cret"},
		{"nats://tok3n@127.0.0.1:4222", "tok3n"},
		{"redis://:pw9@127.0.0.1:6379/0", "pw9"},
		// A NATS seed list: url.Parse takes it whole and would redact the
		// first password only.
		{"nats://a:first1@127.0.0.1:4222,nats://a:second2@127.0.0.1:4223", "second2"},
	} {
		got := RedactURL(tc.in)
		if strings.Contains(got, tc.secret) {
			t.Errorf("RedactURL(%q) = %q, still shows the secret", tc.in, got)
		}
		if !strings.Contains(got, "127.0.0.1") {
			t.Errorf("RedactURL(%q) = %q, lost the host", tc.in, got)
		}
	}
	for _, in := range []string{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222,nats://127.0.0.1:4223"} {
		if got := RedactURL(in); got != in {
			t.Errorf("RedactURL without credentials = %q, want it unchanged", got)
		}
	}
}

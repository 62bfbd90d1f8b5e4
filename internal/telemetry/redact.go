package telemetry

import (
	"errors"
	"net/url"
	"strings"
)

// RedactURL hides the password or token in a NATS or Redis URL so it can be
// logged or shown in an error. A comma-separated list (NATS's several
// seed servers) has each URL redacted.
func RedactURL(raw string) string {
	if strings.Contains(raw, ",") {
		parts := strings.Split(raw, ",")
		for i, p := range parts {
			parts[i] = RedactURL(p)
		}
		return strings.Join(parts, ",")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	if u.User == nil {
		return raw
	}
	if _, hasPassword := u.User.Password(); !hasPassword {
		u.User = url.User("xxxxx")
		return u.String()
	}
	return u.Redacted()
}

// URLError strips the URL that url.Parse quotes in its errors, keeping only
// what was wrong, so a password in the URL is never shown.
func URLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

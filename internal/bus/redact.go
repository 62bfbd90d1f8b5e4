package bus

import "net/url"

// redactURL hides the password or token in a NATS URL so it can be shown.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, hasPassword := u.User.Password(); !hasPassword {
		u.User = url.User("xxxxx")
		return u.String()
	}
	return u.Redacted()
}

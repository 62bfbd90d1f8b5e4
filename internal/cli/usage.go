package cli

import "strings"

// isCobraUsage recognises the errors cobra returns for an unknown command
// or a wrong number of arguments, which carry no type of their own.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, prefix := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "required flag(s)", "unknown flag", "unknown shorthand flag"} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

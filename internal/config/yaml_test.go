package config

import (
	"errors"
	"testing"
)

func TestYAMLErrorAt(t *testing.T) {
	for _, tc := range []struct {
		err  string
		line int
		msg  string
	}{
		{"yaml: line 7: mapping values are not allowed in this context", 7, "mapping values are not allowed in this context"},
		{"yaml: unmarshal errors", 1, "unmarshal errors"},
		{"something else", 1, "something else"},
	} {
		line, msg := YAMLErrorAt(errors.New(tc.err))
		if line != tc.line || msg != tc.msg {
			t.Errorf("YAMLErrorAt(%q) = %d, %q; want %d, %q", tc.err, line, msg, tc.line, tc.msg)
		}
	}
}

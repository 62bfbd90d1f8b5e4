package cmdutil_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/cortex-os/core/internal/cli/cmdutil"
)

func TestCheckListen(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:7470", ":7470", "0.0.0.0:0", "[::1]:65535", "localhost:80"} {
		if err := cmdutil.CheckListen("listen", addr); err != nil {
			t.Errorf("%q: %v, want it accepted", addr, err)
		}
	}
	for _, addr := range []string{"", "garbage", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:http", "127.0.0.1:+80", "::1:80"} {
		err := cmdutil.CheckListen("listen", addr)
		var usage *cmdutil.UsageError
		if !errors.As(err, &usage) || !strings.Contains(err.Error(), "--listen") {
			t.Errorf("%q: %v, want a usage error naming --listen", addr, err)
		}
	}
}

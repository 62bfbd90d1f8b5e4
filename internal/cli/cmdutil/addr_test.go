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

// An address already taken says which flag picks another.
func TestListenOnATakenAddressNamesTheFlag(t *testing.T) {
	first, err := cmdutil.Listen("listen", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	addr := first.Addr().String()
	_, err = cmdutil.Listen("metrics-listen", addr)
	if err == nil || !strings.Contains(err.Error(), "--metrics-listen "+addr+": ") ||
		!strings.Contains(err.Error(), "pick another address with --metrics-listen") {
		t.Errorf("Listen on a taken address: %v, want the flag and how to pick another", err)
	}
}

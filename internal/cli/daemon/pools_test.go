package daemon_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/daemon"
)

// A --python that names no interpreter is a mistake in the command line
// (exit status 2), as any bad flag.
func TestMissingPythonIsAUsageError(t *testing.T) {
	for _, python := range []string{filepath.Join(t.TempDir(), "no-python"), "no-such-python-anywhere"} {
		_, _, err := daemon.PoolHandlers("code-python", daemon.PoolOptions{Python: python})
		var usage *cmdutil.UsageError
		if !errors.As(err, &usage) || !strings.Contains(err.Error(), "--python") {
			t.Errorf("--python %s: %v, want a usage error naming the flag", python, err)
		}
	}
}

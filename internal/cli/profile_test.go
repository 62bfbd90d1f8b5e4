package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// CORTEX_CPUPROFILE writes a CPU profile of the command (gzipped, as
// go tool pprof reads it); a file that cannot be made is a warning, and
// the command still runs.
func TestCPUProfileOfACommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	t.Setenv(profileEnv, path)
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), []string{"version"}, strings.NewReader(""), &out, &errOut); code != 0 {
		t.Fatalf("version: exit %d: %s", code, errOut.String())
	}
	data, err := os.ReadFile(path)
	if err != nil || len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
		t.Fatalf("profile %d bytes, %v; want a gzipped profile", len(data), err)
	}
	t.Setenv(profileEnv, filepath.Join(t.TempDir(), "no", "such", "dir", "cpu.pprof"))
	errOut.Reset()
	if code := Main(context.Background(), []string{"version"}, strings.NewReader(""), &out, &errOut); code != 0 || !strings.Contains(errOut.String(), "no CPU profile") {
		t.Fatalf("unwritable profile: exit %d, stderr %q; want exit 0 and a warning", code, errOut.String())
	}
}

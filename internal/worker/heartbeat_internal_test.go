package worker

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseLoad(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		content string
		cpus    int
		want    float64
	}{
		"linux":    {"1.50 0.80 0.40 2/345 6789\n", 2, 0.75},
		"idle":     {"0.00 0.01 0.05 1/100 1\n", 4, 0},
		"garbage":  {"load: high\n", 2, 0},
		"negative": {"-1.0 0 0 1/1 1\n", 2, 0},
		"no cpus":  {"1.0 0 0 1/1 1\n", 0, 0},
		"empty":    {"", 2, 0},
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := parseLoad(path, tc.cpus); got != tc.want {
			t.Errorf("%s: parseLoad = %v, want %v", name, got, tc.want)
		}
	}
	if got := parseLoad(filepath.Join(dir, "missing"), 2); got != 0 {
		t.Errorf("missing file: %v, want 0", got)
	}
}

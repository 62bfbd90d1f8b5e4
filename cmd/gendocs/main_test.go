package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cortex-os/core/internal/cli"
)

func gen(t *testing.T, args ...string) {
	t.Helper()
	var stderr bytes.Buffer
	if code := run(args, &stderr); code != 0 {
		t.Fatalf("gendocs %v: exit %d: %s", args, code, stderr.String())
	}
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	return files
}

func TestManPagesAreDeterministicAndUndated(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	gen(t, "-man", a)
	gen(t, "-man", b)
	pa, pb := readDir(t, a), readDir(t, b)
	for _, want := range []string{"cortexctl.1", "cortexctl-submit.1", "cortexctl-jobs-list.1", "cortexctl-worker.1", "cortexctl-version.1"} {
		if _, ok := pa[want]; !ok {
			t.Errorf("no %s among %d pages", want, len(pa))
		}
	}
	if len(pa) != len(pb) {
		t.Fatalf("two runs wrote %d and %d pages", len(pa), len(pb))
	}
	th := regexp.MustCompile(`(?m)^\.TH "CORTEXCTL[A-Z\\-]*" "1" "" "CortexOS" "CortexOS Manual"$`)
	for name, page := range pa {
		if !bytes.Equal(page, pb[name]) {
			t.Errorf("%s differs between two runs", name)
		}
		if !th.Match(page) {
			t.Errorf("%s: no undated .TH line in:\n%.200s", name, page)
		}
		if bytes.Contains(page, []byte(`\<`)) {
			t.Errorf("%s shows a markdown escape (\\<)", name)
		}
	}
	// Placeholders in help text survive markdown; shell code stays as it is.
	if !bytes.Contains(pa["cortexctl-worker.1"], []byte("(default <pool>-<random>)")) {
		t.Errorf("cortexctl-worker.1 lost the <pool>-<random> placeholder")
	}
	if !bytes.Contains(pa["cortexctl-completion-bash.1"], []byte("source <(cortexctl completion bash)")) {
		t.Errorf("cortexctl-completion-bash.1 lost 'source <(cortexctl completion bash)'")
	}
}

func TestManPagesReplaceOldOnes(t *testing.T) {
	dir := t.TempDir()
	gone := filepath.Join(dir, "cortexctl-removed-command.1")
	if err := os.WriteFile(gone, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	gen(t, "-man", dir)
	if _, err := os.Stat(gone); !os.IsNotExist(err) {
		t.Errorf("the page of a command that no longer exists is still there (stat: %v)", err)
	}
}

func TestManPagesGzip(t *testing.T) {
	plain, gz := t.TempDir(), t.TempDir()
	gen(t, "-man", plain)
	gen(t, "-man", gz, "-gzip")
	pages, zipped := readDir(t, plain), readDir(t, gz)
	if len(zipped) != len(pages) {
		t.Fatalf("%d gzipped pages for %d pages", len(zipped), len(pages))
	}
	for name, page := range pages {
		r, err := gzip.NewReader(bytes.NewReader(zipped[name+".gz"]))
		if err != nil {
			t.Fatalf("%s.gz: %v", name, err)
		}
		if r.Name != "" || !r.ModTime.IsZero() {
			t.Errorf("%s.gz header has name %q and time %v; want neither", name, r.Name, r.ModTime)
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s.gz: %v", name, err)
		}
		if !bytes.Equal(got, page) {
			t.Errorf("%s.gz does not hold %s", name, name)
		}
	}
}

func TestCompletionsAreWhatTheCommandPrints(t *testing.T) {
	dir := t.TempDir()
	gen(t, "-completions", dir)
	files := readDir(t, dir)
	if len(files) != len(shells) {
		t.Errorf("wrote %d files, want one per shell (%v)", len(files), shells)
	}
	for _, sh := range shells {
		var out, errOut bytes.Buffer
		if code := cli.Main(context.Background(), []string{"completion", sh}, strings.NewReader(""), &out, &errOut); code != 0 {
			t.Fatalf("cortexctl completion %s: exit %d: %s", sh, code, errOut.String())
		}
		got := files["cortexctl."+sh]
		if out.Len() == 0 || !bytes.Equal(got, out.Bytes()) {
			t.Errorf("cortexctl.%s (%d bytes) is not what 'cortexctl completion %s' prints (%d bytes)", sh, len(got), sh, out.Len())
		}
	}
}

func TestUsageErrorsWriteNothing(t *testing.T) {
	for _, args := range [][]string{{}, {"-gzip"}, {"-nope"}, {"-man", "x", "extra"}} {
		dir := t.TempDir()
		t.Chdir(dir)
		var stderr bytes.Buffer
		if code := run(args, &stderr); code != 2 {
			t.Errorf("gendocs %q: exit %d, want 2", args, code)
		}
		if stderr.Len() == 0 {
			t.Errorf("gendocs %q: no message on stderr", args)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("gendocs %q wrote %d entries", args, len(entries))
		}
	}
}

package client

import (
	"os"
	"path/filepath"
	"testing"
)

func TestResolvePrecedence(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("CORTEX_CONTEXT_FILE", filepath.Join(dir, "ctx.json"))
	t.Setenv("CORTEX_SERVER", "")
	t.Setenv("CORTEX_API_KEY", "")

	got, err := Resolve("", "")
	if err != nil || got.Server != DefaultServer || got.APIKey != "" {
		t.Fatalf("no context: %+v %v, want the default server and no key", got, err)
	}
	path, err := SaveContext(Context{Server: "http://127.0.0.1:9999", APIKey: "ctx-key"})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("context file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if got, _ := Resolve("", ""); got != (Target{"http://127.0.0.1:9999", "ctx-key"}) {
		t.Errorf("context: %+v", got)
	}
	t.Setenv("CORTEX_SERVER", "http://env:1")
	t.Setenv("CORTEX_API_KEY", "env-key")
	if got, _ := Resolve("", ""); got != (Target{"http://env:1", "env-key"}) {
		t.Errorf("environment over context: %+v", got)
	}
	if got, _ := Resolve("http://flag:2", "flag-key"); got != (Target{"http://flag:2", "flag-key"}) {
		t.Errorf("flags over environment: %+v", got)
	}
	t.Setenv("CORTEX_API_KEY", "")
	if got, _ := Resolve("http://elsewhere:3", ""); got.APIKey != "" {
		t.Errorf("the context's key was offered to another server: %+v", got)
	}
	if got, _ := Resolve("127.0.0.1:9999", ""); got.APIKey != "ctx-key" {
		t.Errorf("the context's key was not offered to its own server: %+v", got)
	}
}

func TestCorruptContextSaysWhatToDo(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ctx.json")
	t.Setenv("CORTEX_CONTEXT_FILE", p)
	if err := os.WriteFile(p, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadContext(); err == nil {
		t.Fatal("LoadContext accepted a corrupt file")
	}
}

func TestNormalizeServer(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:7470":          "http://127.0.0.1:7470",
		"http://h:1/":             "http://h:1",
		"https://api.example:443": "https://api.example:443",
	} {
		if got, err := NormalizeServer(in); err != nil || got != want {
			t.Errorf("NormalizeServer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"ftp://h", "http://", "::"} {
		if _, err := NormalizeServer(bad); err == nil {
			t.Errorf("NormalizeServer(%q) accepted it", bad)
		}
	}
}

package client

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// useTempContexts points the contexts file at a temporary directory and
// clears the environment that Resolve reads.
func useTempContexts(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cfg", "contexts.json")
	t.Setenv("CORTEX_CONTEXT_FILE", p)
	t.Setenv("CORTEX_SERVER", "")
	t.Setenv("CORTEX_API_KEY", "")
	t.Setenv("CORTEX_CONTEXT", "")
	return p
}

func TestContextPathDefault(t *testing.T) {
	t.Setenv("CORTEX_CONTEXT_FILE", "")
	t.Setenv("XDG_CONFIG_HOME", "/xdg")
	t.Setenv("HOME", "/home/u")
	p, err := ContextPath()
	if err != nil {
		t.Skipf("no user config dir on this OS: %v", err)
	}
	if filepath.Base(p) != "contexts.json" || filepath.Base(filepath.Dir(p)) != "cortex" {
		t.Errorf("ContextPath() = %s, want .../cortex/contexts.json", p)
	}
	t.Setenv("CORTEX_CONTEXT_FILE", "/x/y.json")
	if p, _ := ContextPath(); p != "/x/y.json" {
		t.Errorf("CORTEX_CONTEXT_FILE not honoured: %s", p)
	}
}

func TestResolvePrecedence(t *testing.T) {
	useTempContexts(t)

	got, err := Resolve("", "")
	if err != nil || got.Server != DefaultServer || got.APIKey != "" {
		t.Fatalf("no context: %+v %v, want the default server and no key", got, err)
	}
	path, err := SaveContext("local", Context{Server: "http://127.0.0.1:9999", APIKey: "ctx-key"}, true)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("contexts file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("contexts dir mode %v (%v), want 0700", di.Mode().Perm(), err)
	}
	if got, _ := Resolve("", ""); got != (Target{"http://127.0.0.1:9999", "ctx-key", true}) {
		t.Errorf("current context: %+v", got)
	}
	if _, err := SaveContext("prod", Context{Server: "https://prod:443", APIKey: "prod-key"}, false); err != nil {
		t.Fatal(err)
	}
	if got, _ := Resolve("", ""); got.Server != "http://127.0.0.1:9999" {
		t.Errorf("saving without makeCurrent changed the current context: %+v", got)
	}
	t.Setenv("CORTEX_CONTEXT", "prod")
	if got, _ := Resolve("", ""); got != (Target{"https://prod:443", "prod-key", true}) {
		t.Errorf("CORTEX_CONTEXT over current: %+v", got)
	}
	t.Setenv("CORTEX_SERVER", "http://env:1")
	t.Setenv("CORTEX_API_KEY", "env-key")
	if got, _ := Resolve("", ""); got != (Target{"http://env:1", "env-key", false}) {
		t.Errorf("environment over context: %+v", got)
	}
	if got, _ := Resolve("http://flag:2", "flag-key"); got != (Target{"http://flag:2", "flag-key", false}) {
		t.Errorf("flags over environment: %+v", got)
	}
	t.Setenv("CORTEX_CONTEXT", "")
	t.Setenv("CORTEX_API_KEY", "")
	if got, _ := Resolve("http://elsewhere:3", ""); got.APIKey != "" {
		t.Errorf("the context's key was offered to another server: %+v", got)
	}
	if got, _ := Resolve("127.0.0.1:9999", ""); got.APIKey != "ctx-key" {
		t.Errorf("the context's key was not offered to its own server: %+v", got)
	}
}

func TestResolveUnknownContextListsKnown(t *testing.T) {
	useTempContexts(t)
	for _, n := range []string{"b", "a"} {
		if _, err := SaveContext(n, Context{Server: "http://" + n + ":1"}, false); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("CORTEX_CONTEXT", "nope")
	_, err := Resolve("", "")
	var unknown *UnknownContextError
	if !errors.As(err, &unknown) || unknown.Name != "nope" || strings.Join(unknown.Known, ",") != "a,b" {
		t.Fatalf("Resolve with CORTEX_CONTEXT=nope: %v, want an UnknownContextError listing a, b", err)
	}
	for _, want := range []string{"CORTEX_CONTEXT", `"nope"`, "a, b", "cortexctl context list"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	// Flags and environment that say everything need no context at all.
	if got, err := Resolve("http://flag:2", "k"); err != nil || got.Server != "http://flag:2" {
		t.Errorf("Resolve with both flags read the context: %+v %v", got, err)
	}
}

func TestUseAndDeleteContext(t *testing.T) {
	p := useTempContexts(t)
	if err := UseContext("a"); err == nil {
		t.Fatal("UseContext of a missing context succeeded")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("a failed UseContext wrote the file: %v", err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := SaveContext(n, Context{Server: "http://" + n + ":1", APIKey: "k-" + n}, true); err != nil {
			t.Fatal(err)
		}
	}
	cfg, gotPath, err := LoadConfig()
	if err != nil || gotPath != p || cfg.Current != "b" || len(cfg.Contexts) != 2 {
		t.Fatalf("LoadConfig = %+v, %s, %v", cfg, gotPath, err)
	}
	if err := UseContext("a"); err != nil {
		t.Fatal(err)
	}
	if cfg, _, _ := LoadConfig(); cfg.Current != "a" {
		t.Errorf("current after UseContext(a) = %q", cfg.Current)
	}
	if err := DeleteContext("b"); err != nil {
		t.Fatal(err)
	}
	if cfg, _, _ := LoadConfig(); cfg.Current != "a" || len(cfg.Contexts) != 1 {
		t.Errorf("deleting another context changed current: %+v", cfg)
	}
	if err := DeleteContext("a"); err != nil {
		t.Fatal(err)
	}
	cfg, _, _ = LoadConfig()
	if cfg.Current != "" || len(cfg.Contexts) != 0 {
		t.Errorf("deleting the current context left %+v", cfg)
	}
	var unknown *UnknownContextError
	if err := DeleteContext("a"); !errors.As(err, &unknown) {
		t.Errorf("DeleteContext of a missing context: %v", err)
	}
	if got, err := Resolve("", ""); err != nil || got.Server != DefaultServer {
		t.Errorf("no current context: %+v %v, want the default", got, err)
	}
}

func TestSaveContextFileFormat(t *testing.T) {
	p := useTempContexts(t)
	if _, err := SaveContext("local", Context{Server: "http://127.0.0.1:7470", APIKey: "cx_dev_1"}, true); err != nil { //nolint:gosec // a test key
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Current  string                       `json:"current"`
		Contexts map[string]map[string]string `json:"contexts"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Current != "local" || raw.Contexts["local"]["server"] != "http://127.0.0.1:7470" || raw.Contexts["local"]["api_key"] != "cx_dev_1" {
		t.Errorf("file content:\n%s", b)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestSaveContextFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real.json")
	link := filepath.Join(dir, "link.json")
	if err := os.WriteFile(real, []byte(`{"contexts":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Skipf("no symlinks: %v", err)
	}
	useTempContexts(t)
	t.Setenv("CORTEX_CONTEXT_FILE", link)
	if _, err := SaveContext("a", Context{Server: "http://a:1"}, true); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced by a file: %v %v", fi, err)
	}
	if cfg, err := ReadConfig(real); err != nil || cfg.Current != "a" {
		t.Errorf("the linked file was not updated: %+v %v", cfg, err)
	}
}

func TestContextNames(t *testing.T) {
	useTempContexts(t)
	for _, ok := range []string{"a", "prod-eu.1_x", strings.Repeat("z", 64)} {
		if err := ValidateContextName(ok); err != nil {
			t.Errorf("ValidateContextName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a/b", "é", strings.Repeat("z", 65)} {
		if err := ValidateContextName(bad); err == nil {
			t.Errorf("ValidateContextName(%q) accepted it", bad)
		}
		if _, err := SaveContext(bad, Context{Server: "http://a:1"}, false); err == nil {
			t.Errorf("SaveContext(%q) accepted it", bad)
		}
	}
	if _, err := SaveContext("a", Context{}, false); err == nil {
		t.Error("SaveContext accepted a context with no server")
	}
}

func TestMalformedContextsSaysWhatToDo(t *testing.T) {
	for name, content := range map[string]string{
		"not json":     "{not json",
		"wrong shape":  `{"contexts": []}`,
		"bad name":     `{"contexts": {"a b": {"server": "http://x:1"}}}`,
		"wrong legacy": `{"server": 7}`,
	} {
		t.Run(name, func(t *testing.T) {
			p := useTempContexts(t)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := LoadConfig()
			if err == nil {
				t.Fatal("LoadConfig accepted a malformed file")
			}
			for _, want := range []string{p, "delete the file", "cortexctl up"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			if _, err := Resolve("", ""); err == nil {
				t.Error("Resolve ignored a malformed file")
			}
			if _, err := SaveContext("a", Context{Server: "http://a:1"}, false); err == nil {
				t.Error("SaveContext overwrote a malformed file")
			}
		})
	}
}

func TestReadLegacyContextFile(t *testing.T) {
	p := useTempContexts(t)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(`{"server": "http://127.0.0.1:7470", "api_key": "k"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := Resolve("", ""); err != nil || got != (Target{"http://127.0.0.1:7470", "k", true}) {
		t.Fatalf("legacy file: %+v %v", got, err)
	}
	if _, err := SaveContext("prod", Context{Server: "https://p:1"}, false); err != nil {
		t.Fatal(err)
	}
	cfg, err := ReadConfig(p)
	if err != nil || cfg.Current != LocalContext || cfg.Contexts[LocalContext].APIKey != "k" || len(cfg.Contexts) != 2 {
		t.Errorf("legacy file after a save: %+v %v", cfg, err)
	}
}

func TestEmptyFileIsEmptyConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := ReadConfig(p); err != nil || len(cfg.Contexts) != 0 {
		t.Errorf("empty file: %+v %v", cfg, err)
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

// FuzzReadConfig checks that no file content makes ReadConfig panic and
// that what it accepts has valid names and survives a write and a read.
func FuzzReadConfig(f *testing.F) {
	f.Add([]byte(`{"current":"a","contexts":{"a":{"server":"http://a:1"}}}`))
	f.Add([]byte(`{"server":"http://a:1","api_key":"k"}`))
	f.Add([]byte(`{not json`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "c.json")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := ReadConfig(p)
		if err != nil {
			return
		}
		for n := range cfg.Contexts {
			if ValidateContextName(n) != nil {
				t.Fatalf("accepted name %q", n)
			}
		}
		if err := writeConfig(p, cfg); err != nil {
			t.Fatal(err)
		}
		again, err := ReadConfig(p)
		if err != nil || len(again.Contexts) != len(cfg.Contexts) || again.Current != cfg.Current {
			t.Fatalf("round trip: %+v -> %+v, %v", cfg, again, err)
		}
	})
}

// A key read from the context follows it: a long-running command (top)
// sends the key a restarted up wrote. A key given by flag or environment
// is not the context's, and stays.
func TestFollowContextKey(t *testing.T) {
	p := useTempContexts(t)
	defer func(d time.Duration) { contextRecheck = d }(contextRecheck)
	contextRecheck = 0
	save := func(c Context) {
		t.Helper()
		if _, err := SaveContext(LocalContext, c, true); err != nil {
			t.Fatal(err)
		}
		// A later modification time, however coarse the file system's clock.
		later := time.Now().Add(time.Duration(len(c.APIKey)) * time.Second)
		if err := os.Chtimes(p, later, later); err != nil {
			t.Fatal(err)
		}
	}
	save(Context{Server: "http://127.0.0.1:7470", APIKey: "cx_dev_old"})
	tg, err := Resolve("", "")
	if err != nil || !tg.KeyFromContext || tg.APIKey != "cx_dev_old" {
		t.Fatalf("Resolve = %+v, %v; want the context's key, marked as the context's", tg, err)
	}
	key := FollowContextKey(tg)
	if k := key(); k != "cx_dev_old" {
		t.Fatalf("key before up restarted: %q", k)
	}
	save(Context{Server: "http://127.0.0.1:7470", APIKey: "cx_dev_new-one"})
	if k := key(); k != "cx_dev_new-one" {
		t.Errorf("key after up wrote a new one: %q, want cx_dev_new-one", k)
	}
	// A context now for another gateway offers its key to that one only.
	save(Context{Server: "http://10.0.0.9:7470", APIKey: "cx_other-gateway-key"})
	if k := key(); k != "cx_dev_new-one" {
		t.Errorf("key after the context moved to another gateway: %q, want cx_dev_new-one", k)
	}

	t.Setenv("CORTEX_API_KEY", "from-env")
	if tg, err := Resolve("http://10.0.0.9:7470", ""); err != nil || tg.KeyFromContext || tg.APIKey != "from-env" {
		t.Errorf("Resolve with CORTEX_API_KEY = %+v, %v; want the environment's key, not the context's", tg, err)
	}
}

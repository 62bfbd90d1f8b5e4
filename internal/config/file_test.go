package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cortex.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPrecedence checks the four layers in the order commands apply them
// (cmdutil.BindConfig): flags, then ApplyEnv, then ApplyFile.
func TestPrecedence(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	def := fs.String("from-default", "default", "")
	file := fs.String("from-file", "default", "")
	env := fs.String("from-env", "default", "")
	flag := fs.String("from-flag", "default", "")
	if err := fs.Parse([]string{"--from-flag=flag"}); err != nil {
		t.Fatal(err)
	}
	environ := map[string]string{"CORTEX_FROM_ENV": "env", "CORTEX_FROM_FLAG": "env"}
	if err := ApplyEnv(fs, func(k string) (string, bool) { v, ok := environ[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, "from-file: file\nfrom-env: file\nfrom-flag: file\n")
	if err := ApplyFile(fs, path, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"from-default", *def, "default"}, {"from-file", *file, "file"}, {"from-env", *env, "env"}, {"from-flag", *flag, "flag"},
	} {
		if c.got != c.want {
			t.Errorf("--%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if !fs.Changed("from-file") || fs.Changed("from-default") {
		t.Errorf("Changed: from-file %v (want true), from-default %v (want false)", fs.Changed("from-file"), fs.Changed("from-default"))
	}
}

func TestApplyFileTypes(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	keys := fs.StringSlice("api-keys", []string{"default:x"}, "")
	caps := fs.StringSlice("capability", nil, "")
	n := fs.Int("max-parallel", 1, "")
	d := fs.Duration("lease", time.Second, "")
	b := fs.Bool("insecure", false, "")
	empty := fs.String("metrics-listen", "127.0.0.1:9471", "")
	path := writeFile(t, `# comment
api-keys:
  - key-one-1:acme
  - key-two-2:beta:read
capability: python3,gpu
max-parallel: 8
lease: 1m30s
insecure: true
metrics-listen: ""
`)
	if err := ApplyFile(fs, path, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(*keys, " "); got != "key-one-1:acme key-two-2:beta:read" {
		t.Errorf("api-keys = %q: a YAML list replaces the default", got)
	}
	if got := strings.Join(*caps, " "); got != "python3 gpu" {
		t.Errorf("capability = %q: one value splits at commas as on the command line", got)
	}
	if *n != 8 || *d != 90*time.Second || !*b || *empty != "" {
		t.Errorf("max-parallel %d, lease %s, insecure %v, metrics-listen %q", *n, *d, *b, *empty)
	}
}

func TestApplyFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown key", "count: 2\nbogus: 1\n", "cortex.yaml:2: bogus: unknown key: this command has no --bogus flag (see --help)"},
		{"list for one value", "name: [a, b]\n", "cortex.yaml:1: name: takes one value (a string), not a list"},
		{"map", "count:\n  a: 1\n", "cortex.yaml:2: count: want a int, not a map"},
		{"wrong type", "name: x\ncount: many\n", "cortex.yaml:2: count: not a valid int"},
		{"bad list item", "list:\n  - [a]\n", "cortex.yaml:2: list: line 2: a list item must be a plain value"},
		{"no value", "name:\n", "cortex.yaml:1: name: has no value; give one or remove the key"},
		{"twice", "name: a\nname: b\n", "cortex.yaml:2: name: given twice (first at line 1)"},
		{"config in config", "config: other.yaml\n", "cortex.yaml:1: config: a config file cannot name another one"},
		{"not a map", "- name\n", "cortex.yaml:1: want a map of flag names to values (nats-url: nats://...)"},
		{"two documents", "name: a\n---\nname: b\n", "cortex.yaml:2: a config file holds one YAML document; remove the second one"},
		{"alias", "name: &x a\ncount: *x\n", "cortex.yaml:1: name: anchors and aliases are not used in a config file; write the value out"},
		{"syntax", "name: a\n  b: : c\n", "cortex.yaml:2: invalid YAML: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			name := fs.String("name", "default", "")
			count := fs.Int("count", 1, "")
			fs.StringSlice("list", nil, "")
			fs.String("config", "", "")
			path := writeFile(t, tc.yaml)
			err := ApplyFile(fs, path, nil)
			if err == nil {
				t.Fatal("ApplyFile succeeded")
			}
			msg := strings.TrimPrefix(err.Error(), filepath.Dir(path)+"/")
			if !strings.HasPrefix(msg, tc.want) {
				t.Errorf("error %q, want it to start with %q", msg, tc.want)
			}
			var fe *FileError
			if !errors.As(err, &fe) {
				t.Errorf("error %T, want a *FileError", err)
			}
			if *name != "default" || *count != 1 || fs.Changed("name") || fs.Changed("count") {
				t.Errorf("a bad file changed flags: name %q, count %d", *name, *count)
			}
		})
	}
}

func TestApplyFileBadValueChangesNothing(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	name := fs.String("name", "default", "")
	list := fs.StringSlice("list", []string{"x"}, "")
	fs.Int("count", 1, "")
	err := ApplyFile(fs, writeFile(t, "name: set\nlist: [a, b]\ncount: secret-value\n"), nil)
	if err == nil || !strings.Contains(err.Error(), ":3: count: not a valid int") {
		t.Fatalf("ApplyFile = %v, want an error at line 3", err)
	}
	if strings.Contains(err.Error(), "secret-value") {
		t.Errorf("error %q repeats the value", err)
	}
	if *name != "default" || strings.Join(*list, ",") != "x" || fs.Changed("name") || fs.Changed("list") {
		t.Errorf("flags set before the bad one were kept: name %q, list %q", *name, *list)
	}
}

func TestApplyFileSkipsOtherCommandsKeys(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	name := fs.String("name", "default", "")
	elsewhere := func(k string) bool { return k == "listen" }
	if err := ApplyFile(fs, writeFile(t, "name: a\nlisten: 127.0.0.1:0\n"), elsewhere); err != nil {
		t.Fatalf("a key another command takes: %v", err)
	}
	if *name != "a" {
		t.Errorf("name = %q", *name)
	}
	if err := ApplyFile(fs, writeFile(t, "lsten: x\n"), elsewhere); err == nil {
		t.Error("a key no command takes was accepted")
	}
}

func TestApplyFileEmptyAndMissing(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("name", "default", "")
	for _, content := range []string{"", "# only a comment\n"} {
		if err := ApplyFile(fs, writeFile(t, content), nil); err != nil {
			t.Errorf("file %q: %v, want nothing set and no error", content, err)
		}
	}
	err := ApplyFile(fs, filepath.Join(t.TempDir(), "nope.yaml"), nil)
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Errorf("missing file: %v, want an error naming it", err)
	}
}

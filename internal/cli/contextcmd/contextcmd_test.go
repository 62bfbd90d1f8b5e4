package contextcmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	"github.com/cortex-os/core/internal/client"
)

const (
	localKey = "cx_dev_0123456789abcdef0123456789a1b2"
	prodKey  = "ck_live_secretsecretsecretc3d4"
)

// tempContexts points the contexts file at a temporary directory, with
// "local" (current) and "prod" in it, and clears CORTEX_*.
func tempContexts(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "contexts.json")
	t.Setenv("CORTEX_CONTEXT_FILE", p)
	t.Setenv("CORTEX_CONTEXT", "")
	t.Setenv("CORTEX_SERVER", "")
	t.Setenv("CORTEX_API_KEY", "")
	t.Setenv("NO_COLOR", "")
	if _, err := client.SaveContext("local", client.Context{
		Server: "http://127.0.0.1:7470", APIKey: localKey,
		NATSURL: "nats://cortex:natspass@127.0.0.1:4222", RedisURL: "redis://:redispass@127.0.0.1:6379/0",
	}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := client.SaveContext("prod", client.Context{Server: "https://cortex.example.com", APIKey: prodKey}, false); err != nil {
		t.Fatal(err)
	}
	return p
}

func factory() (*cmdutil.Factory, *bytes.Buffer, *bytes.Buffer) {
	var out, errOut bytes.Buffer
	return &cmdutil.Factory{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, &out, &errOut
}

// execute runs the context group with args, as cortexctl would.
func execute(t *testing.T, f *cmdutil.Factory, args ...string) error {
	t.Helper()
	cmd := NewCmdContext(f)
	cmd.SetArgs(args)
	cmd.SetOut(f.Out)
	cmd.SetErr(f.ErrOut)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	// As cortexctl's root does: a bad flag is a usage error.
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &cmdutil.UsageError{Err: err} })
	return cmd.Execute()
}

func isUsage(err error) bool {
	var u *cmdutil.UsageError
	return errors.As(err, &u)
}

func TestFlags(t *testing.T) {
	f, _, _ := factory()
	var list *ListOptions
	run(t, NewCmdList(f, func(o *ListOptions) error { list = o; return nil }), "-o", "json")
	if list.Format != output.JSON || list.Out != f.Out {
		t.Errorf("list options %+v", list)
	}
	var show *ShowOptions
	run(t, NewCmdShow(f, func(o *ShowOptions) error { show = o; return nil }), "prod", "--show-key", "-o", "yaml")
	if *show != (ShowOptions{Out: f.Out, ErrOut: f.ErrOut, Format: output.YAML, Name: "prod", ShowKey: true}) {
		t.Errorf("show options %+v", show)
	}
	run(t, NewCmdShow(f, func(o *ShowOptions) error { show = o; return nil }))
	if show.Name != "" || show.Format != "" {
		t.Errorf("show with no args: %+v", show)
	}
	var use *UseOptions
	run(t, NewCmdUse(f, func(o *UseOptions) error { use = o; return nil }), "prod")
	if use.Name != "prod" {
		t.Errorf("use options %+v", use)
	}
	var del *DeleteOptions
	run(t, NewCmdDelete(f, func(o *DeleteOptions) error { del = o; return nil }), "prod")
	if del.Name != "prod" {
		t.Errorf("delete options %+v", del)
	}
	var set *SetOptions
	run(t, NewCmdSet(f, func(o *SetOptions) error { set = o; return nil }), "prod", "--server", "h:1", "--api-key", "k", "--use")
	want := SetOptions{In: f.In, ErrOut: f.ErrOut, Name: "prod", Server: "h:1", APIKey: "k", APIKeySet: true, Use: true}
	if !reflect.DeepEqual(*set, want) {
		t.Errorf("set options %+v, want %+v", *set, want)
	}
	run(t, NewCmdSet(f, func(o *SetOptions) error { set = o; return nil }), "prod", "--api-key-file", "-")
	if set.APIKeySet || set.APIKeyFile != "-" || set.Use {
		t.Errorf("set with --api-key-file: %+v", set)
	}
	run(t, NewCmdSet(f, func(o *SetOptions) error { set = o; return nil }), "prod", "--api-key=")
	if !set.APIKeySet || set.APIKey != "" {
		t.Errorf("--api-key= did not count as given: %+v", set)
	}
}

func run(t *testing.T, cmd *cobra.Command, args ...string) {
	t.Helper()
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("%s %v: %v", cmd.Name(), args, err)
	}
}

// The root's persistent --server and --api-key say where to connect;
// set's own flags of the same names must win.
func TestSetFlagsShadowRootFlags(t *testing.T) {
	f, _, _ := factory()
	root := &cobra.Command{Use: "cortexctl"}
	root.PersistentFlags().StringVar(&f.Server, "server", "", "")
	root.PersistentFlags().StringVar(&f.APIKey, "api-key", "", "")
	var got *SetOptions
	root.AddCommand(NewCmdSet(f, func(o *SetOptions) error { got = o; return nil }))
	root.SetArgs([]string{"set", "prod", "--server", "https://p", "--api-key", "k"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if got.Server != "https://p" || got.APIKey != "k" || f.Server != "" || f.APIKey != "" {
		t.Errorf("set got %q %q; root got %q %q", got.Server, got.APIKey, f.Server, f.APIKey)
	}
}

func TestArgsAreUsageErrors(t *testing.T) {
	tempContexts(t)
	for _, args := range [][]string{
		{"use"}, {"use", "a", "b"}, {"delete"}, {"show", "a", "b"}, {"set"}, {"list", "x"},
		{"list", "-o", "xml"},
	} {
		f, _, _ := factory()
		err := execute(t, f, args...)
		if err == nil {
			t.Errorf("%v: no error", args)
			continue
		}
		if !isUsage(err) && !strings.HasPrefix(err.Error(), "unknown command") {
			// cobra.NoArgs says "unknown command", which cortexctl maps to exit 2.
			t.Errorf("%v: %v (%T) is not a usage error", args, err, err)
		}
	}
}

func TestEveryCommandIsDocumented(t *testing.T) {
	f, _, _ := factory()
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Short == "" || c.Long == "" || c.Example == "" {
			t.Errorf("%s lacks Short, Long or Example", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(NewCmdContext(f))
}

func TestListTable(t *testing.T) {
	tempContexts(t)
	f, out, errOut := factory()
	if err := listRun(&ListOptions{Out: f.Out, ErrOut: f.ErrOut}); err != nil {
		t.Fatal(err)
	}
	want := "CURRENT   NAME    SERVER                       API KEY\n" +
		"*         local   http://127.0.0.1:7470        cx_dev_…a1b2\n" +
		"          prod    https://cortex.example.com   ck_live_…c3d4\n"
	if out.String() != want {
		t.Errorf("list =\n%s\nwant\n%s", out, want)
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr: %q", errOut)
	}

	out.Reset()
	if err := listRun(&ListOptions{Out: f.Out, ErrOut: f.ErrOut, Format: output.Wide}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "NATS") || !strings.Contains(out.String(), "nats://cortex:xxxxx@127.0.0.1:4222") {
		t.Errorf("wide list =\n%s", out)
	}
	assertNoSecrets(t, out.String())
}

func assertNoSecrets(t *testing.T, s string) {
	t.Helper()
	for _, secret := range []string{localKey, prodKey, "natspass", "redispass"} {
		if strings.Contains(s, secret) {
			t.Errorf("output shows the secret %q:\n%s", secret, s)
		}
	}
}

func TestListMachine(t *testing.T) {
	tempContexts(t)
	t.Setenv("CORTEX_CONTEXT", "prod")
	f, out, errOut := factory()
	if err := listRun(&ListOptions{Out: f.Out, ErrOut: f.ErrOut, Format: output.JSON}); err != nil {
		t.Fatal(err)
	}
	var got struct{ Items []contextView }
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if len(got.Items) != 2 || !got.Items[0].Current || got.Items[0].APIKey != "cx_dev_…a1b2" || got.Items[1].Name != "prod" {
		t.Errorf("list -o json =\n%s", out)
	}
	if errOut.Len() != 0 {
		t.Errorf("machine output wrote to stderr: %q", errOut)
	}
	assertNoSecrets(t, out.String())

	out.Reset()
	if err := listRun(&ListOptions{Out: f.Out, ErrOut: f.ErrOut, Format: output.YAML}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "items:\n- apiKey: cx_dev_…a1b2\n  current: true\n") {
		t.Errorf("list -o yaml =\n%s", out)
	}
	assertNoSecrets(t, out.String())
}

func TestListOverriddenAndEmpty(t *testing.T) {
	p := tempContexts(t)
	t.Setenv("CORTEX_CONTEXT", "prod")
	f, _, errOut := factory()
	if err := listRun(&ListOptions{Out: f.Out, ErrOut: f.ErrOut}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "CORTEX_CONTEXT=prod") {
		t.Errorf("no note about CORTEX_CONTEXT: %q", errOut)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	f, out, errOut := factory()
	if err := listRun(&ListOptions{Out: f.Out, ErrOut: f.ErrOut}); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 || !strings.Contains(errOut.String(), "cortexctl up") {
		t.Errorf("empty list: stdout %q stderr %q", out, errOut)
	}
	out.Reset()
	if err := listRun(&ListOptions{Out: f.Out, ErrOut: f.ErrOut, Format: output.JSON}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "{\n  \"items\": []\n}\n" {
		t.Errorf("empty list -o json = %q", out)
	}
}

func TestShow(t *testing.T) {
	tempContexts(t)
	f, out, _ := factory()
	if err := showRun(&ShowOptions{Out: f.Out}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name:      local", "current:   true", "api key:   cx_dev_…a1b2", "nats:      nats://cortex:xxxxx@"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	assertNoSecrets(t, out.String())

	out.Reset()
	if err := showRun(&ShowOptions{Out: f.Out, Name: "prod", ShowKey: true, Format: output.JSON}); err != nil {
		t.Fatal(err)
	}
	var v contextView
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	if v != (contextView{Name: "prod", Server: "https://cortex.example.com", APIKey: prodKey}) {
		t.Errorf("show prod --show-key -o json = %+v", v)
	}

	t.Setenv("CORTEX_CONTEXT", "prod")
	out.Reset()
	if err := showRun(&ShowOptions{Out: f.Out, Format: output.YAML}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "name: prod\n") || !strings.Contains(out.String(), "apiKey: ck_live_…c3d4\n") {
		t.Errorf("show with CORTEX_CONTEXT=prod:\n%s", out)
	}
}

func TestShowWithoutCurrent(t *testing.T) {
	tempContexts(t)
	if err := client.DeleteContext("local"); err != nil {
		t.Fatal(err)
	}
	f, _, _ := factory()
	err := showRun(&ShowOptions{Out: f.Out})
	if err == nil || !strings.Contains(err.Error(), "cortexctl context use NAME") || !strings.Contains(err.Error(), "prod") {
		t.Errorf("show with no current context: %v", err)
	}
}

func TestUnknownNameListsKnownAndExitsOne(t *testing.T) {
	tempContexts(t)
	for _, args := range [][]string{{"use", "nope"}, {"show", "nope"}, {"delete", "nope"}} {
		f, _, _ := factory()
		err := execute(t, f, args...)
		var unknown *client.UnknownContextError
		if !errors.As(err, &unknown) || isUsage(err) {
			t.Errorf("%v: %v (%T), want an UnknownContextError (exit 1)", args, err, err)
			continue
		}
		if !strings.Contains(err.Error(), "local, prod") {
			t.Errorf("%v: %q does not list the known contexts", args, err)
		}
	}
}

func TestUse(t *testing.T) {
	tempContexts(t)
	t.Setenv("CORTEX_CONTEXT", "local")
	f, out, errOut := factory()
	if err := execute(t, f, "use", "prod"); err != nil {
		t.Fatal(err)
	}
	cfg, _, _ := client.LoadConfig()
	if cfg.Current != "prod" {
		t.Errorf("current = %q", cfg.Current)
	}
	if out.Len() != 0 || !strings.Contains(errOut.String(), `switched to context "prod"`) || !strings.Contains(errOut.String(), "CORTEX_CONTEXT=local still wins") {
		t.Errorf("stdout %q, stderr %q", out, errOut)
	}
}

func TestDelete(t *testing.T) {
	tempContexts(t)
	f, _, errOut := factory()
	if err := execute(t, f, "delete", "prod"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(errOut.String(), "current") {
		t.Errorf("deleting a non-current context talked about current: %q", errOut)
	}
	errOut.Reset()
	if err := execute(t, f, "rm", "local"); err != nil {
		t.Fatal(err)
	}
	cfg, _, _ := client.LoadConfig()
	if len(cfg.Contexts) != 0 || cfg.Current != "" {
		t.Errorf("after deleting both: %+v", cfg)
	}
	if !strings.Contains(errOut.String(), "no contexts are left") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestSet(t *testing.T) {
	p := tempContexts(t)
	dir := filepath.Dir(p)
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte("  ck_new_key_from_file\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	f, out, errOut := factory()
	if err := setRun(&SetOptions{ErrOut: f.ErrOut, Name: "staging", Server: "staging:7470", APIKeyFile: keyFile, Use: true}); err != nil {
		t.Fatal(err)
	}
	cfg, _, _ := client.LoadConfig()
	if cfg.Current != "staging" || cfg.Contexts["staging"] != (client.Context{Server: "http://staging:7470", APIKey: "ck_new_key_from_file"}) {
		t.Errorf("after set staging: %+v", cfg)
	}
	if out.Len() != 0 || !strings.Contains(errOut.String(), `added context "staging"`) {
		t.Errorf("stdout %q stderr %q", out, errOut)
	}

	// An update keeps what it is not given; a new server with the old key
	// is pointed out.
	errOut.Reset()
	if err := setRun(&SetOptions{ErrOut: f.ErrOut, Name: "local", Server: "http://127.0.0.1:8080"}); err != nil {
		t.Fatal(err)
	}
	cfg, _, _ = client.LoadConfig()
	if c := cfg.Contexts["local"]; c.Server != "http://127.0.0.1:8080" || c.APIKey != localKey || c.NATSURL == "" || cfg.Current != "staging" {
		t.Errorf("update of local: %+v", cfg)
	}
	if !strings.Contains(errOut.String(), "keeps the API key saved for http://127.0.0.1:7470") {
		t.Errorf("stderr %q", errOut)
	}

	// The key from stdin; --api-key "" removes it.
	if err := setRun(&SetOptions{In: strings.NewReader("ck_from_stdin\n"), ErrOut: f.ErrOut, Name: "prod", APIKeyFile: "-"}); err != nil {
		t.Fatal(err)
	}
	if cfg, _, _ := client.LoadConfig(); cfg.Contexts["prod"].APIKey != "ck_from_stdin" {
		t.Errorf("key from stdin: %+v", cfg.Contexts["prod"])
	}
	if err := setRun(&SetOptions{ErrOut: f.ErrOut, Name: "prod", APIKeySet: true}); err != nil {
		t.Fatal(err)
	}
	if cfg, _, _ := client.LoadConfig(); cfg.Contexts["prod"].APIKey != "" {
		t.Errorf("--api-key '' kept the key: %+v", cfg.Contexts["prod"])
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode after set: %v %v", fi.Mode().Perm(), err)
	}
}

func TestSetUsageErrors(t *testing.T) {
	p := tempContexts(t)
	empty := filepath.Join(filepath.Dir(p), "empty")
	two := filepath.Join(filepath.Dir(p), "two")
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	_ = os.WriteFile(two, []byte("a b\n"), 0o600)
	f, _, _ := factory()
	for name, o := range map[string]*SetOptions{
		"new without server": {Name: "new"},
		"bad name":           {Name: "a b", Server: "h:1"},
		"bad server":         {Name: "new", Server: "ftp://h"},
		"both keys":          {Name: "prod", APIKey: "k", APIKeySet: true, APIKeyFile: empty},
		"empty key file":     {Name: "prod", APIKeyFile: empty},
		"two words":          {Name: "prod", APIKeyFile: two},
		"missing key file":   {Name: "prod", APIKeyFile: filepath.Join(filepath.Dir(p), "nope")},
	} {
		o.ErrOut = f.ErrOut
		before, _ := os.ReadFile(p)
		err := setRun(o)
		if !isUsage(err) {
			t.Errorf("%s: %v, want a usage error", name, err)
		}
		if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
			t.Errorf("%s: the file changed", name)
		}
	}
}

func TestCompleteName(t *testing.T) {
	tempContexts(t)
	got, dir := completeName(nil, nil, "p")
	if !reflect.DeepEqual(got, []string{"prod\thttps://cortex.example.com"}) || dir != cobra.ShellCompDirectiveNoFileComp {
		t.Errorf("complete p: %v %v", got, dir)
	}
	if got, _ := completeName(nil, nil, ""); len(got) != 2 {
		t.Errorf("complete '': %v", got)
	}
	if got, _ := completeName(nil, []string{"prod"}, ""); got != nil {
		t.Errorf("completed a second argument: %v", got)
	}
	f, out, _ := factory()
	cmd := NewCmdContext(f)
	root := &cobra.Command{Use: "cortexctl"}
	root.AddCommand(cmd)
	root.SetOut(out)
	root.SetArgs([]string{cobra.ShellCompRequestCmd, "context", "use", "lo"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "local\thttp://127.0.0.1:7470\n") {
		t.Errorf("__complete context use lo:\n%s", out)
	}
}

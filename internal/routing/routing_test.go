package routing_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/routing"
)

func TestLoadExample(t *testing.T) {
	r, err := routing.Load(filepath.Join("testdata", "routing.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	wantTopics := []string{"job.batch.*", "job.chat.*", "job.chat.fast.*", "job.chat.summary", "job.code.python", "job.echo", "job.sleep"}
	if got := r.Topics(); !slices.Equal(got, wantTopics) {
		t.Errorf("Topics() = %v, want %v", got, wantTopics)
	}
	if got, want := r.Pools(), []string{"batch", "chat-fast", "chat-llm", "code-python", "echo"}; !slices.Equal(got, want) {
		t.Errorf("Pools() = %v, want %v", got, want)
	}
	for pool, want := range map[string]routing.Defaults{
		"echo":        {MaxAttempts: 2, Timeout: 30 * time.Second},
		"code-python": {MaxAttempts: 1, Timeout: time.Minute},
		"chat-llm":    {MaxAttempts: 3, Timeout: 2 * time.Minute, Priority: 5},
		"chat-fast":   routing.BuiltinDefaults,
		"batch":       routing.BuiltinDefaults,
		"nope":        routing.BuiltinDefaults,
		"":            routing.BuiltinDefaults,
	} {
		if got := r.Defaults(pool); got != want {
			t.Errorf("Defaults(%q) = %+v, want %+v", pool, got, want)
		}
	}
}

func TestPool(t *testing.T) {
	r, err := routing.Load(filepath.Join("testdata", "routing.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]string{
		"job.echo":            "echo",
		"job.sleep":           "echo",
		"job.code.python":     "code-python",
		"job.code.python.x":   "", // an exact topic is not a pattern
		"job.code":            "",
		"job.chat.x":          "chat-llm",
		"job.chat.x.y.z":      "chat-llm",
		"job.chat":            "", // a pattern needs one more token
		"job.chatty":          "", // ... after a dot
		"job.chat.fast":       "chat-llm",
		"job.chat.fast.x":     "chat-fast", // the longer pattern wins
		"job.chat.fast.x.y":   "chat-fast",
		"job.chat.summary":    "chat-fast", // the exact topic wins
		"job.chat.summary.x":  "chat-llm",
		"job.batch.nightly":   "batch",
		"job.nope":            "",
		"sys.destroy":         "",
		"":                    "",
		"job.echo.not-a-kind": "",
	} {
		got, ok := r.Pool(topic)
		if got != want || ok != (want != "") {
			t.Errorf("Pool(%q) = %q, %v, want %q", topic, got, ok, want)
		}
	}
	for topic, want := range map[string]bool{"job.echo": true, "job.chat.x": true, "job.nope": false, "job.chat": false, "sys.destroy": true, "chat.llm": true} {
		if got := r.Routable(topic); got != want {
			t.Errorf("Routable(%s) = %v, want %v", topic, got, want)
		}
	}
}

func TestCatchAllPattern(t *testing.T) {
	r, err := routing.NewRouter(map[string]string{"job.*": "general", "job.echo": "echo"})
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]string{"job.echo": "echo", "job.anything": "general", "job.a.b.c": "general"} {
		if got, _ := r.Pool(topic); got != want {
			t.Errorf("Pool(%s) = %q, want %q", topic, got, want)
		}
	}
	if got := r.Topics(); !slices.Equal(got, []string{"job.*", "job.echo"}) {
		t.Errorf("Topics() = %v", got)
	}
}

func TestDefault(t *testing.T) {
	r := routing.Default()
	if got := r.Topics(); !slices.Equal(got, []string{"job.chat.llm", "job.code.python", "job.echo", "job.sleep"}) {
		t.Errorf("Topics() = %v", got)
	}
	if d := r.Defaults("chat-llm"); d.MaxAttempts != 3 {
		t.Errorf("Defaults(chat-llm) = %+v, want 3 attempts: retryable upstream errors are retried", d)
	}
	if d := r.Defaults("echo"); d != routing.BuiltinDefaults {
		t.Errorf("Defaults(echo) = %+v, want the built-in defaults", d)
	}
	if pool, _ := r.Pool("job.code.python"); pool != "code-python" {
		t.Errorf("Pool(job.code.python) = %q", pool)
	}
	if got := routing.DefaultOf("echo").Topics(); !slices.Equal(got, []string{"job.echo", "job.sleep"}) {
		t.Errorf("DefaultOf(echo).Topics() = %v", got)
	}
	if pool, _ := r.Pool("job.sleep"); pool != "echo" {
		t.Errorf("Pool(job.sleep) = %q", pool)
	}
	if pool, _ := r.Pool("job.chat.llm"); pool != "chat-llm" {
		t.Errorf("Pool(job.chat.llm) = %q", pool)
	}
	if d := r.Defaults("echo"); d != routing.BuiltinDefaults || d.MaxAttempts != 1 {
		t.Errorf("Defaults(echo) = %+v", d)
	}
}

func TestNewRouter(t *testing.T) {
	for routes, want := range map[string]string{
		"sys.x=p":               "only job.* topics",
		"job.x=a.b":             "pool must be",
		"job..x=p":              "not a valid topic",
		"job.*.x=p":             "not a valid topic",
		"job.chat.>=p":          "not a valid topic",
		"sys.*=p":               "a pattern is a job.* topic",
		"job.Chat.*=p":          "a pattern is a job.* topic",
		"*=p":                   "only job.* topics",
		"job.a=":                "pool must be",
		"job.a.b.c.d.e.f.g.*=p": "matches nothing",
	} {
		topic, pool, _ := strings.Cut(routes, "=")
		_, err := routing.NewRouter(map[string]string{topic: pool})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewRouter(%s) = %v, want an error with %q", routes, err, want)
		}
	}
	if _, err := routing.NewRouter(map[string]string{"job.a.b.c.d.e.f.*": "p"}); err != nil {
		t.Errorf("a 7-token pattern: %v", err)
	}
	routes, err := routing.ParseRoutes([]string{"job.a=p1", "job.b=p2", "job.chat.*=chat", "job.a=p1"})
	if err != nil || routes["job.a"] != "p1" || routes["job.b"] != "p2" || routes["job.chat.*"] != "chat" {
		t.Errorf("ParseRoutes = %v, %v", routes, err)
	}
	if _, err := routing.ParseRoutes([]string{"job.a"}); err == nil {
		t.Error("a route without = was accepted")
	}
	if _, err := routing.ParseRoutes([]string{"job.a=p1", "job.a=p2"}); err == nil || !strings.Contains(err.Error(), "already routed to pool p1") {
		t.Errorf("one topic to two pools: %v", err)
	}
	r, err := routing.NewRouter(routes)
	if err != nil {
		t.Fatal(err)
	}
	if pool, _ := r.Pool("job.chat.x"); pool != "chat" {
		t.Errorf("Pool(job.chat.x) = %q, want chat", pool)
	}
	if d := r.Defaults("chat"); d != routing.BuiltinDefaults {
		t.Errorf("Defaults(chat) = %+v, want the built-in ones", d)
	}
}

const good = `version: 1
pools:
  echo:
    topics: [job.echo]
`

func TestParseErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		src  string
		want []string // every error, in order
	}{
		"empty":        {"", []string{`r.yaml:1: routing file is empty; it needs version: 1 and pools`}},
		"comment only": {"# nothing\n", []string{`r.yaml:1: routing file is empty; it needs version: 1 and pools`}},
		"syntax":       {"version: 1\npools: [\n", []string{`r.yaml:2: invalid YAML: did not find expected node content`}},
		"tab":          {"version: 1\npools:\n\techo: {}\n", []string{`r.yaml:3: invalid YAML: found character that cannot start any token`}},
		"two docs":     {good + "---\nversion: 1\n", []string{`r.yaml:5: a routing file holds one YAML document; remove the second one`}},
		"not a map":    {"- a\n- b\n", []string{`r.yaml:1: a routing file must be a YAML mapping with version and pools`}},
		"scalar":       {"hello\n", []string{`r.yaml:1: a routing file must be a YAML mapping with version and pools`}},
		"no version":   {"pools:\n  echo: {topics: [job.echo]}\n", []string{"r.yaml:1: version: missing; add `version: 1`"}},
		"version 2":    {"version: 2\npools:\n  echo: {topics: [job.echo]}\n", []string{`r.yaml:1: version: unsupported version "2"; this build reads version 1`}},
		"unknown top":  {good + "pool:\n  x: {}\n", []string{`r.yaml:5: unknown field "pool"; known fields are version, pools`}},
		"dup top":      {good + "version: 1\n", []string{`r.yaml:5: version: duplicate field`}},
		"no pools":     {"version: 1\n", []string{"r.yaml:1: pools: missing; list the pools and the topics each serves, e.g. pools: {echo: {topics: [job.echo]}}"}},
		"null pools":   {"version: 1\npools:\n", []string{`r.yaml:2: pools: no pools; a routing file needs at least one`}},
		"empty pools":  {"version: 1\npools: {}\n", []string{`r.yaml:2: pools: no pools; a routing file needs at least one`}},
		"pools list":   {"version: 1\npools: [echo]\n", []string{`r.yaml:2: pools: must be a mapping of pool names to pools`}},
		"bad pool name": {"version: 1\npools:\n  Echo.1: {topics: [job.echo]}\n",
			[]string{`r.yaml:3: pools: "Echo.1" is not a valid pool name: use 1-64 characters of a-z, 0-9, - and _`}},
		"dup pool": {good + "  echo:\n    topics: [job.sleep]\n",
			[]string{`r.yaml:5: pool "echo": duplicate pool; it is first defined on line 3`}},
		"pool scalar": {"version: 1\npools:\n  echo: job.echo\n",
			[]string{`r.yaml:3: pool "echo": must be a mapping with topics and, optionally, defaults`}},
		"unknown pool field": {good + "    topic: [job.x]\n",
			[]string{`r.yaml:5: pool "echo": unknown field "topic"; known fields are topics, defaults`}},
		"no topics": {"version: 1\npools:\n  echo:\n    defaults: {priority: 1}\n",
			[]string{`r.yaml:3: pool "echo": topics: missing; list the topics the pool serves, e.g. topics: [job.echo]`}},
		"empty topics": {"version: 1\npools:\n  echo: {topics: []}\n",
			[]string{`r.yaml:3: pool "echo": topics: empty; list at least one topic`}},
		"topics scalar": {"version: 1\npools:\n  echo: {topics: job.echo}\n",
			[]string{`r.yaml:3: pool "echo": topics: must be a list of topics, e.g. [job.echo, job.chat.*]`}},
		"topic not a string": {"version: 1\npools:\n  echo:\n    topics:\n      - job.echo\n      - {a: b}\n      -\n",
			[]string{`r.yaml:6: pool "echo": topics: each topic is a single string, e.g. job.echo`, `r.yaml:7: pool "echo": topics: each topic is a single string, e.g. job.echo`}},
		"bad topics": {"version: 1\npools:\n  echo:\n    topics:\n      - sys.destroy\n      - job.Echo\n      - job.*.x\n      - sys.*\n      - job\n",
			[]string{
				`r.yaml:5: pool "echo": topics: "sys.destroy": only job.* topics are routed to pools, e.g. job.echo`,
				`r.yaml:6: pool "echo": topics: "job.Echo": not a valid topic: use 2-8 dot-separated tokens of a-z, 0-9, - and _, e.g. job.echo, or a pattern such as job.chat.*`,
				`r.yaml:7: pool "echo": topics: "job.*.x": not a valid topic: use 2-8 dot-separated tokens of a-z, 0-9, - and _, e.g. job.echo, or a pattern such as job.chat.*`,
				`r.yaml:8: pool "echo": topics: "sys.*": a pattern is a job.* topic followed by .*, e.g. job.chat.*`,
				`r.yaml:9: pool "echo": topics: "job": only job.* topics are routed to pools, e.g. job.echo`,
			}},
		"topic twice in a pool": {"version: 1\npools:\n  echo:\n    topics: [job.echo,\n      job.echo]\n",
			[]string{`r.yaml:5: pool "echo": topics: "job.echo" is listed twice (also on line 4)`}},
		"topic in two pools": {good + "  other:\n    topics: [job.x, job.echo]\n",
			[]string{`r.yaml:6: pool "other": topics: "job.echo" is already routed to pool "echo" (line 4); a topic or pattern belongs to one pool`}},
		"pattern in two pools": {"version: 1\npools:\n  a: {topics: [job.chat.*]}\n  b: {topics: [job.chat.*]}\n",
			[]string{`r.yaml:4: pool "b": topics: "job.chat.*" is already routed to pool "a" (line 3); a topic or pattern belongs to one pool`}},
		"unknown default": {good + "    defaults: {retries: 3}\n",
			[]string{`r.yaml:5: pool "echo": unknown field "defaults.retries"; known fields are max_attempts, timeout, priority`}},
		"defaults list": {good + "    defaults: [1]\n",
			[]string{`r.yaml:5: pool "echo": defaults: must be a mapping, e.g. {max_attempts: 3, timeout: 30s, priority: 5}`}},
		"dup default": {good + "    defaults:\n      priority: 1\n      priority: 2\n",
			[]string{`r.yaml:7: pool "echo": defaults.priority: duplicate field`}},
		"defaults out of range": {good + "    defaults:\n      max_attempts: 0\n      timeout: 0s\n      priority: 10\n",
			[]string{
				`r.yaml:6: pool "echo": defaults.max_attempts: 0 is out of range: use 1-10`,
				`r.yaml:7: pool "echo": defaults.timeout: 0s is out of range: use more than 0s and at most 24h0m0s`,
				`r.yaml:8: pool "echo": defaults.priority: 10 is out of range: use 0-9`,
			}},
		"defaults too big": {good + "    defaults: {max_attempts: 11, timeout: 25h, priority: -1}\n",
			[]string{
				`r.yaml:5: pool "echo": defaults.max_attempts: 11 is out of range: use 1-10`,
				`r.yaml:5: pool "echo": defaults.priority: -1 is out of range: use 0-9`,
				`r.yaml:5: pool "echo": defaults.timeout: 25h0m0s is out of range: use more than 0s and at most 24h0m0s`,
			}},
		"defaults wrong type": {good + "    defaults: {max_attempts: two, timeout: 30, priority: 1.5}\n",
			[]string{
				`r.yaml:5: pool "echo": defaults.max_attempts: "two" is not a whole number: use 1-10`,
				`r.yaml:5: pool "echo": defaults.priority: "1.5" is not a whole number: use 0-9`,
				`r.yaml:5: pool "echo": defaults.timeout: "30" is not a duration: use a number with a unit, such as 30s, 5m or 1h`,
			}},
		"quoted number": {good + "    defaults: {max_attempts: \"2\", timeout: [1s]}\n",
			[]string{
				`r.yaml:5: pool "echo": defaults.max_attempts: "2" is not a whole number: use 1-10`,
				`r.yaml:5: pool "echo": defaults.timeout: must be a duration such as 30s, 5m or 1h`,
			}},
		"anchors": {"version: 1\npools:\n  a: &p {topics: [job.a]}\n  b: *p\n",
			[]string{
				`r.yaml:3: pool "a": YAML anchors, aliases and merge keys are not supported; write the value out`,
				`r.yaml:4: pool "b": YAML anchors, aliases and merge keys are not supported; write the value out`,
			}},
		"several at once": {"version: 1\npools:\n  echo:\n    topics: [job.echo]\n    defaults: {priority: 12}\n  Bad: {topics: [job.x]}\n  other: {topics: [job.echo]}\n",
			[]string{
				`r.yaml:5: pool "echo": defaults.priority: 12 is out of range: use 0-9`,
				`r.yaml:6: pools: "Bad" is not a valid pool name: use 1-64 characters of a-z, 0-9, - and _`,
				`r.yaml:7: pool "other": topics: "job.echo" is already routed to pool "echo" (line 4); a topic or pattern belongs to one pool`,
			}},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := routing.Parse("r.yaml", []byte(tc.src))
			if err == nil {
				t.Fatalf("Parse accepted it: topics %v", r.Topics())
			}
			got := loadErrors(t, err)
			if !slices.Equal(got, tc.want) {
				t.Errorf("errors:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

// loadErrors returns the messages of err, which must be *LoadError values.
func loadErrors(t *testing.T, err error) []string {
	t.Helper()
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	var out []string
	for _, e := range errs {
		var le *routing.LoadError
		if !errors.As(e, &le) {
			t.Fatalf("%T %v is not a *LoadError", e, e)
		}
		if le.File != "r.yaml" || le.Line < 1 {
			t.Errorf("%v: file %q line %d", e, le.File, le.Line)
		}
		out = append(out, e.Error())
	}
	return out
}

func TestParseAccepts(t *testing.T) {
	for name, src := range map[string]string{
		"minimal":             good,
		"exact beats pattern": "version: 1\npools:\n  a: {topics: [job.chat.*]}\n  b: {topics: [job.chat.x]}\n",
		"nested patterns":     "version: 1\npools:\n  a: {topics: [job.chat.*]}\n  b: {topics: [job.chat.fast.*]}\n",
		"catch-all":           "version: 1\npools:\n  a: {topics: [job.*]}\n",
		"null defaults":       good + "    defaults:\n",
		"empty defaults":      good + "    defaults: {}\n",
		"hex and long":        good + "    defaults: {max_attempts: 0x3, timeout: 1h30m, priority: 9}\n",
		"max":                 good + "    defaults: {max_attempts: 10, timeout: 24h}\n",
	} {
		if _, err := routing.Parse("r.yaml", []byte(src)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseLimits(t *testing.T) {
	big := good + "# " + strings.Repeat("x", 1<<20) + "\n"
	if _, err := routing.Parse("r.yaml", []byte(big)); err == nil || !strings.Contains(err.Error(), "r.yaml:1: routing file is larger than") {
		t.Errorf("a file over 1 MiB: %v", err)
	}
	var b strings.Builder
	b.WriteString("version: 1\npools:\n")
	for range 30 {
		b.WriteString("  BAD: {topics: [job.x]}\n")
	}
	errs := loadErrors(t, mustFail(t, b.String()))
	if len(errs) != 21 || !strings.HasSuffix(errs[20], "too many errors; fix the ones above first") {
		t.Errorf("%d errors, last %q; want 20 and a note", len(errs), errs[len(errs)-1])
	}
}

func mustFail(t *testing.T, src string) error {
	t.Helper()
	_, err := routing.Parse("r.yaml", []byte(src))
	if err == nil {
		t.Fatal("Parse accepted it")
	}
	return err
}

func TestLoadMissingFile(t *testing.T) {
	_, err := routing.Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "read routing file") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

// FuzzLoad checks that Parse never panics, and that what it accepts is
// consistent: every listed topic resolves to a listed pool, with defaults
// in range.
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile(filepath.Join("testdata", "routing.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		string(example), good, "", "version: 1\npools: {a: {topics: [job.*]}}\n",
		"version: 1\npools:\n  a: {topics: [job.chat.*], defaults: {max_attempts: 3, timeout: 2m, priority: 5}}\n  b: {topics: [job.chat.x]}\n",
		"version: 1\npools:\n  a: &p {topics: [job.a]}\n  b: *p\n", "version: 1\npools: [\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := routing.Parse("f.yaml", data)
		if err != nil {
			if r != nil {
				t.Fatal("a router and an error")
			}
			if !strings.HasPrefix(err.Error(), "f.yaml:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		pools := r.Pools()
		if len(pools) == 0 {
			t.Fatal("accepted with no pools")
		}
		for _, topic := range r.Topics() {
			probe := topic
			if p, ok := strings.CutSuffix(topic, ".*"); ok {
				probe = p + ".x"
			}
			pool, ok := r.Pool(probe)
			if !ok || !slices.Contains(pools, pool) {
				t.Fatalf("topic %s: pool %q, %v; pools %v", topic, pool, ok, pools)
			}
		}
		for _, p := range pools {
			d := r.Defaults(p)
			if d.MaxAttempts < 1 || d.MaxAttempts > routing.MaxAttempts || d.Timeout < 0 || d.Timeout > routing.MaxTimeout || d.Priority < 0 || d.Priority > routing.MaxPriority {
				t.Fatalf("pool %s: defaults out of range: %+v", p, d)
			}
		}
	})
}

package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestLoadRefusesExpensiveRules(t *testing.T) {
	_, err := Load("testdata/invalid_cost.yaml")
	if err == nil {
		t.Fatal("Load succeeded, want the expensive rules refused")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{
		`testdata/invalid_cost.yaml:12: rule "label-pairs-in-prompt": when: worst-case cost 5.5e+09 is over the limit of 1e+06; simplify the expression: `,
		`testdata/invalid_cost.yaml:16: rule "four-deep": when: worst-case cost 6.2e+07 is over the limit of 1e+06; simplify the expression: `,
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("error %d:\n got %q\nwant prefix %q", i, lines[i], w)
		}
		if !strings.Contains(lines[i], "comprehension over labels runs up to 32 times") {
			t.Errorf("error %d does not say what to simplify: %q", i, lines[i])
		}
	}

	const head = "version: 1\nname: t\ndefault: {decision: DENY, reason: no}\nrules:\n  - name: r\n    decision: DENY\n    reason: r\n    when: "
	for _, expr := range []string{
		// Nested comprehensions over labels: 32^3 steps and more.
		`labels.all(a, labels.all(b, labels.all(c, a != b)))`,
		`labels.exists(a, labels.exists(b, labels.exists(c, labels.exists(d, a + b == c + d))))`,
		// A scan of the prompt inside a comprehension.
		`labels.exists(k, prompt.contains(k))`,
		`labels.exists(k, has_credentials(prompt + k))`,
		`labels.exists(k, credential_kinds(prompt + k).size() > 0)`,
		`[prompt, prompt, prompt, prompt, prompt, prompt, prompt, prompt, prompt, prompt].exists(p, has_credentials(p + p))`,
		// A regular expression over the prompt per label.
		`labels.exists(k, prompt.matches("secret"))`,
	} {
		if _, err := Parse("test.yaml", []byte(head+"'"+expr+"'\n")); err == nil || !strings.Contains(err.Error(), "test.yaml:8: rule \"r\": when: worst-case cost ") {
			t.Errorf("%s: got %v, want refused for its cost", expr, err)
		}
	}
	for _, expr := range []string{
		`has_credentials(prompt)`,
		`credential_kinds(prompt).exists(k, k == "jwt")`,
		`prompt.matches("(?i)password") || prompt.contains("BEGIN")`,
		`labels.all(a, labels.all(b, a == b || a != b))`,
		`labels.exists(k, k.startsWith("x-") && labels[k].size() > 10)`,
		`labels.map(k, labels[k]).all(v, v != "")`,
	} {
		if _, err := Parse("test.yaml", []byte(head+"'"+expr+"'\n")); err != nil {
			t.Errorf("%s: refused: %v", expr, err)
		}
	}
	// The shipped policies are well within the limit.
	mustLoad(t, "testdata/valid.yaml")
	if _, err := defaultPolicy(); err != nil {
		t.Errorf("default policy: %v", err)
	}
}

// The static estimate must bound what the same expression costs at run
// time on the largest inputs, and for the credential functions be the
// same as their runtime charge.
func TestEstimateBoundsRuntimeCost(t *testing.T) {
	env, err := celEnv()
	if err != nil {
		t.Fatal(err)
	}
	labels := make(map[string]string, maxLabels)
	for i := range maxLabels {
		labels[fmt.Sprintf("%03d", i)+strings.Repeat("k", maxLabelBytes-3)] = strings.Repeat("v", maxLabelBytes)
	}
	big := Input{
		Topic: strings.Repeat("t", maxTopicBytes), Tenant: strings.Repeat("n", maxTenantBytes),
		Labels: labels, Prompt: typicalPrompt(MaxPromptBytes), Now: t0,
	}
	for _, tc := range []struct {
		expr  string
		exact bool // the estimate is the runtime cost
	}{
		{`has_credentials(prompt)`, true},
		{`credential_kinds(prompt).size() > 0`, false},
		{`has_credentials(prompt) && !("allow-secrets" in labels)`, false},
		{`topic.startsWith("job.") && tenant != "blocked"`, false},
		{`labels.all(a, labels.all(b, a == b || a != b))`, false},
		{`labels.exists(k, k.contains("zz") || labels[k].contains("zz"))`, false},
		{`prompt.contains("zzzz")`, false},
	} {
		ast, iss := env.Compile(tc.expr)
		if iss.Err() != nil {
			t.Fatalf("%s: %v", tc.expr, iss.Err())
		}
		est, err := env.EstimateCost(ast, inputSizes{})
		if err != nil {
			t.Fatalf("%s: estimate: %v", tc.expr, err)
		}
		prg, err := env.Program(ast, programOptions()...)
		if err != nil {
			t.Fatal(err)
		}
		_, det, err := prg.Eval(newActivation(&big, t0))
		if err != nil {
			t.Fatalf("%s: eval: %v", tc.expr, err)
		}
		actual := *det.ActualCost()
		if actual > est.Max {
			t.Errorf("%s: runtime cost %d is over the estimate %d", tc.expr, actual, est.Max)
		}
		if tc.exact && est.Max-actual > 1 {
			t.Errorf("%s: estimate %d, runtime cost %d; the detector's estimate and charge disagree", tc.expr, est.Max, actual)
		}
	}
	if got, want := detectorCallCost(MaxPromptBytes), uint64(1+MaxPromptBytes/10); got != want {
		t.Errorf("detectorCallCost(1 MiB) = %d, want %d", got, want)
	}
}

func TestNeedsPrompt(t *testing.T) {
	if !Default().NeedsPrompt() {
		t.Errorf("the default policy scans the prompt; NeedsPrompt = false")
	}
	if !mustLoad(t, "testdata/valid.yaml").NeedsPrompt() {
		t.Errorf("valid.yaml scans the prompt; NeedsPrompt = false")
	}
	if (*Policy)(nil).NeedsPrompt() {
		t.Errorf("nil policy needs the prompt")
	}
	const head = "version: 1\nname: t\ndefault: {decision: DENY, reason: no}\nrules:\n"
	for _, tc := range []struct {
		whens []string
		want  bool
	}{
		{nil, false},
		{[]string{`topic == "prompt"`, `prompt_size > 10`, `"prompt" in labels`, `labels.?prompt.orValue("") == "x"`}, false},
		{[]string{`topic.startsWith("job.")`, `has_credentials(prompt)`}, true},
		{[]string{`prompt.size() > 10`}, true},
		{[]string{`credential_kinds(prompt).size() > 0`}, true},
		{[]string{`"true" == "true"`, `prompt == ""`}, true}, // a shadowed rule still counts (Explain runs it)
		// A comprehension variable named prompt is not the prompt...
		{[]string{`labels.exists(prompt, prompt == "x")`}, false},
		// ...but its range, and a .prompt inside it, are.
		{[]string{`[prompt].exists(prompt, prompt == "x")`}, true},
		{[]string{`labels.exists(prompt, .prompt == "x")`}, true},
	} {
		src := head
		if len(tc.whens) == 0 {
			src += "  []\n"
		}
		for i, w := range tc.whens {
			src += fmt.Sprintf("  - {name: r%d, when: '%s', decision: DENY, reason: r}\n", i, w)
		}
		if got := mustParse(t, src).NeedsPrompt(); got != tc.want {
			t.Errorf("%q: NeedsPrompt = %v, want %v", tc.whens, got, tc.want)
		}
	}
}

func TestReferencesIgnoresText(t *testing.T) {
	env, _ := celEnv()
	ast, iss := env.Compile(`topic.contains("prompt") && labels["prompt"] == "prompt_size"`)
	if iss.Err() != nil {
		t.Fatal(iss.Err())
	}
	if references(ast, "prompt") {
		t.Errorf("string literals count as a reference to prompt")
	}
	if !references(ast, "topic") || !references(ast, "labels") || references(ast, "tenant") {
		t.Errorf("references gets other variables wrong")
	}
}

func TestDeepNestingIsRefusedAtLoad(t *testing.T) {
	expr := strings.Repeat("[", 40) + "1" + strings.Repeat("]", 40) + " == []"
	src := "version: 1\nname: deep\ndefault: {decision: DENY, reason: no}\nrules:\n  - name: deep\n    when: '" + expr + "'\n    decision: ALLOW\n    reason: never\n"
	start := time.Now()
	_, err := Parse("deep.yaml", []byte(src))
	if err == nil || !strings.Contains(err.Error(), `deep.yaml:6: rule "deep"`) {
		t.Fatalf("Parse of a 40-deep expression = %v, want a refusal naming the rule", err)
	}
	t.Logf("refused in %s: %v", time.Since(start), err)
}

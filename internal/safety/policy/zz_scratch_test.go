package policy

import (
	"fmt"
	"testing"
)

func TestScratchCost(t *testing.T) {
	env, _ := celEnv()
	for _, e := range []string{
		`topic == "sys.destroy"`, `topic.startsWith("sys.")`, `prompt_size > 1048576`, `has_credentials(prompt)`, `topic.startsWith("job.")`,
		`has_credentials(prompt) && !("allow-secrets" in labels)`,
		`labels.?team.orValue("") == "a" && priority >= 0 && attempt <= 3`,
		`now.getHours("UTC") >= 22`,
		`prompt.matches("(?i)password")`, `prompt.contains("password")`,
		`labels.all(a, labels.all(b, a == b || a != b))`,
		`labels.all(a, labels.all(b, labels.all(c, a != b)))`,
		`labels.all(a, labels.all(b, labels.all(c, labels.all(d, a != b))))`,
		`labels.exists(k, prompt.contains(k))`,
		`labels.all(k, labels.all(v, prompt.contains(k + v)))`,
		`credential_kinds(prompt).exists(k, k == "jwt")`,
		`size(credential_kinds(prompt)) > 0`,
		`labels.map(k, labels[k]).all(v, v != "")`,
		`[prompt, prompt, prompt].exists(p, has_credentials(p + p))`,
		`labels.exists(prompt, prompt == "x")`,
		`"prompt" in labels`,
		`prompt_size > 10`,
	} {
		ast, iss := env.Compile(e)
		if iss.Err() != nil {
			t.Logf("%s: %v", e, iss.Err())
			continue
		}
		est, err := env.EstimateCost(ast, inputSizes{})
		t.Logf("%-70s min=%d max=%.3g err=%v prompt=%v", e, est.Min, float64(est.Max), err, references(ast, "prompt"))
	}
	_ = fmt.Sprint
}

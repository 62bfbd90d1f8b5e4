package up

import (
	"strings"
	"testing"
)

// The warning for a routed pool that no worker of the stack serves gives
// the worker command only for a built-in pool: 'cortexctl worker --pool'
// refuses any other ("has no built-in plugins").
func TestUnservedWarningSuggestsOnlyWhatWorks(t *testing.T) {
	for _, c := range []struct {
		pool   string
		topics []string
		want   string
	}{
		{"echo", []string{"job.echo"}, "(cortexctl worker --pool echo ...)"},
		{"code-python", []string{"job.code.python"}, "(cortexctl worker --pool code-python ...)"},
		{"chat-llm", []string{"job.chat.*"}, "(cortexctl worker --pool chat-llm --llm-base-url URL ...)"},
		{"gpu", []string{"job.gpu", "job.render.*"}, `a worker built with a plugin for job.gpu, job.render.* (see "Write your own worker" in the README)`},
		{"spare", nil, `a worker built with plugins of its own (see "Write your own worker" in the README)`},
	} {
		got := unservedWarning(c.pool, c.topics)
		if !strings.HasPrefix(got, "routes lead to pool "+c.pool+", which no worker of this stack serves: its jobs wait for ") ||
			!strings.HasSuffix(got, c.want) {
			t.Errorf("pool %s: %q, want it to end %q", c.pool, got, c.want)
		}
		if c.pool == "gpu" && strings.Contains(got, "--pool") {
			t.Errorf("pool gpu: %q suggests a worker command that refuses the pool", got)
		}
	}
}

package python_test

import (
	"context"
	"testing"

	"github.com/cortex-os/core/plugins/python"
)

// BenchmarkRun is the cost of one sandboxed run of a trivial script: two
// interpreter starts (the preamble that sets the limits, then the code),
// the temporary directory, and the namespaces where they work.
func BenchmarkRun(b *testing.B) {
	for _, tc := range []struct {
		name string
		opts python.Options
	}{{"namespaces", python.Options{}}, {"no-namespaces", python.Options{NoNamespaces: true}}} {
		b.Run(tc.name, func(b *testing.B) {
			tc.opts.Python = interpreter(b)
			r, err := python.New(tc.opts)
			if err != nil {
				b.Fatal(err)
			}
			if !tc.opts.NoNamespaces && !r.Isolation().Namespaces {
				b.Logf("no namespaces here: %s", r.Isolation().Why)
			}
			for b.Loop() {
				if _, err := r.Run(context.Background(), []byte("pass")); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

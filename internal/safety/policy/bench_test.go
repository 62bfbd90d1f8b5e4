package policy

import (
	"fmt"
	"testing"
)

// BenchmarkEvaluate measures one decision of the default policy for a job
// on a job.* topic (every rule is evaluated, the credential scan runs).
// The in-process budget is p50 < 20 µs.
func BenchmarkEvaluate(b *testing.B) {
	p := Default()
	for _, size := range []int{200, 64 << 10} {
		in := Input{
			JobID: "j-1", Topic: "job.chat.completion", Tenant: "acme",
			Labels: map[string]string{"team": "search"}, Priority: 5, Attempt: 1,
			Prompt: typicalPrompt(size), PromptSize: uint64(size), Now: t0,
		}
		if d := p.Evaluate(in); d.Decision != Allow {
			b.Fatalf("decision %+v", d)
		}
		b.Run(fmt.Sprintf("prompt=%dB", size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				p.Evaluate(in)
			}
		})
	}
}

// BenchmarkDetector measures the credential scan alone on prompts of
// typical sizes.
func BenchmarkDetector(b *testing.B) {
	for _, size := range []int{200, 4 << 10, 64 << 10} {
		s := typicalPrompt(size)
		b.Run(fmt.Sprintf("prompt=%dB", size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				HasCredentials(s)
			}
		})
	}
}

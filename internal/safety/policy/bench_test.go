package policy

import (
	"fmt"
	"strings"
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
	// Worst cases: one 64 KiB base64 run, and Go source with many long
	// identifiers and dotted names.
	blob := fake(1, b64Chars, 64<<10)
	var code strings.Builder
	for code.Len() < 64<<10 {
		code.WriteString("\tresp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: openai.ChatModelGPT4oMini, Messages: msgs})\n" +
			"\tif err != nil {\n\t\treturn fmt.Errorf(\"chat completion for tenant %s: %w\", tenantID, err)\n\t}\n" +
			"\turl := \"https://api.example.com/v1/projects/\" + projectID + \"/deployments/production-eu-west-1/status\"\n")
	}
	for name, s := range map[string]string{"base64-blob=65536B": blob, "go-code=65536B": code.String()[:64<<10]} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(s)))
			for b.Loop() {
				HasCredentials(s)
			}
		})
	}
}

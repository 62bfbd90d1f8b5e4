package job

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/cli/cmdutil"
)

func TestSubmitFlags(t *testing.T) {
	var got *SubmitOptions
	cmd := NewCmdSubmit(&cmdutil.Factory{}, func(_ context.Context, o *SubmitOptions) error { got = o; return nil })
	cmd.SetArgs([]string{"-t", "job.echo", "--prompt", "hi", "-l", "a=1", "--label", "b=2", "--wait", "--timeout", "3s"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	want := &SubmitOptions{Factory: got.Factory, Topic: "job.echo", Prompt: "hi", Labels: []string{"a=1", "b=2"}, Wait: true, Timeout: 3 * time.Second}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("options %+v, want %+v", got, want)
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels([]string{"team=ml", "empty=", "eq=a=b"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"team": "ml", "empty": "", "eq": "a=b"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ParseLabels = %v, want %v", got, want)
	}
	for _, bad := range []string{"noequals", "=v"} {
		if _, err := ParseLabels([]string{bad}); err == nil {
			t.Errorf("ParseLabels(%q) accepted it", bad)
		}
	}
}

func FuzzParseLabels(f *testing.F) {
	f.Add("team=ml")
	f.Add("=")
	f.Fuzz(func(t *testing.T, s string) {
		labels, err := ParseLabels([]string{s})
		if err == nil && len(labels) != 1 {
			t.Fatalf("ParseLabels(%q) = %v without error", s, labels)
		}
	})
}

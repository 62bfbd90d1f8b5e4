package config

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestApplyEnvFillsOnlyUnsetFlags(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	url := fs.String("nats-url", "default", "")
	n := fs.Int("max-parallel", 1, "")
	if err := fs.Parse([]string{"--max-parallel=7"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"CORTEX_NATS_URL": "nats://x", "CORTEX_MAX_PARALLEL": "99"}
	if err := ApplyEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if *url != "nats://x" {
		t.Errorf("nats-url = %q, want the environment's value", *url)
	}
	if *n != 7 {
		t.Errorf("max-parallel = %d, want the flag's 7 to win over the environment", *n)
	}
}

func TestApplyEnvRejectsBadValue(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.Int("max-parallel", 1, "")
	err := ApplyEnv(fs, func(k string) (string, bool) { return "lots", k == "CORTEX_MAX_PARALLEL" })
	if err == nil || !strings.Contains(err.Error(), "CORTEX_MAX_PARALLEL") {
		t.Fatalf("ApplyEnv = %v, want an error naming CORTEX_MAX_PARALLEL", err)
	}
}

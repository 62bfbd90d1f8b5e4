package telemetry_test

import (
	"strings"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/telemetry"
	"github.com/cortex-os/core/internal/telemetry/telemetrytest"
)

// Only a component that decides exports the decision latency: a gateway,
// scheduler or worker does not show a histogram that stays empty.
func TestDecisionLatencyIsExportedOnceSomethingDecided(t *testing.T) {
	m := telemetry.NewMetrics()
	if out := telemetrytest.Scrape(t, m); strings.Contains(out, "cortex_safety_decision_seconds") {
		t.Fatalf("a registry that decided nothing exports the decision latency:\n%s", out)
	}
	m.Decided("ALLOW", "allow-jobs", 3*time.Millisecond)
	m.Decided("DENY", "deny-sys", time.Millisecond)
	out := telemetrytest.Scrape(t, m)
	for _, want := range []string{"cortex_safety_decision_seconds_count 2", `cortex_safety_decisions_total{decision="ALLOW",rule="allow-jobs"} 1`} {
		if !strings.Contains(out, want) {
			t.Errorf("after two decisions, no %q in:\n%s", want, out)
		}
	}
}

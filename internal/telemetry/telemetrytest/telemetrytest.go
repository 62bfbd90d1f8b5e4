// Package telemetrytest reads a metrics registry as Prometheus would, for
// the tests of the components that export metrics. It is imported by tests
// only.
package telemetrytest

import (
	"io"
	"net/http/httptest"
	"testing"

	"github.com/cortex-os/core/internal/telemetry"
)

// Scrape returns what m's /metrics serves, in Prometheus' text format.
func Scrape(t testing.TB, m *telemetry.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

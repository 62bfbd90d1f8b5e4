package routing_test

import (
	"testing"

	"github.com/cortex-os/core/internal/routing"
)

func TestRouter(t *testing.T) {
	if _, err := routing.NewRouter(map[string]string{"sys.x": "p"}); err == nil {
		t.Error("a sys.* route was accepted")
	}
	if _, err := routing.NewRouter(map[string]string{"job.x": "a.b"}); err == nil {
		t.Error("a pool with a dot was accepted")
	}
	routes, err := routing.ParseRoutes([]string{"job.a=p1", "job.b=p2"})
	if err != nil || routes["job.a"] != "p1" || routes["job.b"] != "p2" {
		t.Errorf("ParseRoutes = %v, %v", routes, err)
	}
	if _, err := routing.ParseRoutes([]string{"job.a"}); err == nil {
		t.Error("a route without = was accepted")
	}
	r, err := routing.NewRouter(map[string]string{"job.echo": "echo"})
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]bool{"job.echo": true, "job.nope": false, "sys.destroy": true, "chat.llm": true} {
		if got := r.Routable(topic); got != want {
			t.Errorf("Routable(%s) = %v, want %v", topic, got, want)
		}
	}
}

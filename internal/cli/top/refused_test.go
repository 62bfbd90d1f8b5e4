package top

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/cli/cmdutil"
)

var badKey = connect.NewError(connect.CodeUnauthenticated, "API key not recognised: check the key, or ask an operator for one").WithRemote()

// A refused API key is reported as such by --once, keeping its code (so
// exit status 4), not as an unreachable cluster.
func TestOnceRefusedKey(t *testing.T) {
	f := newFake()
	f.setDown(badKey)
	var out bytes.Buffer
	o := &Options{Factory: &cmdutil.Factory{Out: &out}, Source: f, Server: "http://gw", Once: true, Window: time.Millisecond}
	err := topRun(context.Background(), o)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{"the gateway at http://gw refused the API key", "API key not recognised", "--api-key"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q: %s", want, msg)
		}
	}
	if strings.Contains(msg, "unreachable") {
		t.Errorf("error calls a refused key unreachable: %s", msg)
	}
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("code %v, want unauthenticated (exit 4)", connect.CodeOf(err))
	}
}

// The live banner says the same, with the hint and the retry in full at
// 80x24.
func TestBannerRefusedKey(t *testing.T) {
	m := step(t, NewModel("http://gw", newFake(), nil, t0), listedMsg{At: t0, Err: badKey}, tickMsg{Now: t0})
	s := strings.Join(strings.Fields(screen(m)), " ")
	if !strings.Contains(s, "the gateway at http://gw refused the API key") || !strings.Contains(s, "--api-key,") ||
		!strings.Contains(s, "retrying in 1s") {
		t.Errorf("banner for a refused key:\n%s", screen(m))
	}
	if strings.Contains(s, "unreachable") || strings.Contains(s, "cannot serve") {
		t.Errorf("banner misnames a refused key:\n%s", screen(m))
	}
}

func TestWrapWords(t *testing.T) {
	for _, c := range []struct {
		in   string
		w    int
		want []string
	}{
		{"pass it with --api-key or a context", 16, []string{"pass it with", "--api-key or a", "context"}},
		{"a 0123456789abcdef b", 8, []string{"a", "01234567", "89abcdef", "b"}},
		{"", 10, nil},
	} {
		if got := wrapWords(c.in, c.w); strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("wrapWords(%q, %d) = %q, want %q", c.in, c.w, got, c.want)
		}
	}
}

// --listen out of range is a usage error, before anything connects.
func TestListenOutOfRangeIsRefused(t *testing.T) {
	for _, arg := range []string{"-1s", "11m"} {
		ran := false
		cmd := NewCmdTop(&cmdutil.Factory{}, func(context.Context, *Options) error { ran = true; return nil })
		cmd.SetArgs([]string{"--once", "--listen", arg})
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.Execute()
		var usage *cmdutil.UsageError
		if !errors.As(err, &usage) || !strings.Contains(err.Error(), "--listen "+arg) || ran {
			t.Errorf("top --once --listen %s: %v (ran %v), want a usage error naming the flag", arg, err, ran)
		}
	}
}

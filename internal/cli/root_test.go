package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/cli/cmdutil"
)

func TestExitCode(t *testing.T) {
	for name, tc := range map[string]struct {
		err  error
		want int
	}{
		"ok":          {nil, 0},
		"plain":       {errors.New("boom"), 1},
		"usage":       {&cmdutil.UsageError{Err: errors.New("bad flag")}, 2},
		"cobra usage": {errors.New(`unknown command "sumbit" for "cortexctl"`), 2},
		"job denied":  {fmt.Errorf("wait: %w", &cmdutil.JobNotDoneError{JobID: "j", State: "DENIED"}), 3},
		"auth":        {connect.NewError(connect.CodeUnauthenticated, "no key"), 4},
		"interrupted": {fmt.Errorf("poll: %w", context.Canceled), 130},
		"not found":   {connect.NewError(connect.CodeNotFound, "no job"), 1},
		"bad request": {connect.NewError(connect.CodeInvalidArgument, "bad topic"), 2},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("%s: ExitCode(%v) = %d, want %d", name, tc.err, got, tc.want)
		}
	}
}

func TestMainUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"sumbit"}, {"submit"}, {"submit", "--topic", "job.echo", "--bogus"}, {"status"}} {
		var out, errOut bytes.Buffer
		code := Main(context.Background(), args, strings.NewReader(""), &out, &errOut)
		if code != cmdutil.ExitUsage {
			t.Errorf("cortexctl %v: exit %d, want %d (stderr %q)", args, code, cmdutil.ExitUsage, errOut.String())
		}
		if !strings.Contains(errOut.String(), "Error:") {
			t.Errorf("cortexctl %v: stderr %q has no error message", args, errOut.String())
		}
	}
}

func TestMainSuggestsCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	Main(context.Background(), []string{"sumbit"}, strings.NewReader(""), &out, &errOut)
	if !strings.Contains(errOut.String(), "submit") {
		t.Errorf("a typo should suggest the command; stderr: %q", errOut.String())
	}
}

func TestHelpDocumentsExitCodes(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), []string{"--help"}, strings.NewReader(""), &out, &errOut); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, want := range []string{"Exit status", "130", "DENIED"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

// A gateway whose certificate no trusted CA signed: the error says how to
// trust a private CA.
func TestMainHintsAtAPrivateCA(t *testing.T) {
	ts := httptest.NewTLSServer(http.NotFoundHandler())
	defer ts.Close()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), []string{"jobs", "list", "--server", ts.URL, "--api-key", "k3y-for-a-test"}, strings.NewReader(""), &out, &errOut)
	if code != cmdutil.ExitError || !strings.Contains(errOut.String(), "certificate signed by unknown authority") ||
		!strings.Contains(errOut.String(), "SSL_CERT_FILE=ca.pem") {
		t.Errorf("exit %d, stderr %q: want exit 1 and the hint to set SSL_CERT_FILE", code, errOut.String())
	}
}

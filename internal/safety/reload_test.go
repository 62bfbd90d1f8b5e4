package safety_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/safety"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// waitFor polls cond until it holds or 5s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	retrying(t, what, nil, cond)
}

// retrying polls cond until it holds or 5s pass, calling act first and
// again every half second while cond does not hold.
func retrying(t *testing.T, what string, act func(), cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var next time.Time
	for {
		if act != nil && !time.Now().Before(next) {
			act()
			next = time.Now().Add(500 * time.Millisecond)
		}
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 5s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdataPolicy, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWatchReloads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	first, second := readTestdata(t, "approval.yaml"), readTestdata(t, "shadow.yaml")
	writeFile(t, path, first)

	k := safety.NewKernel("k1", nil, discard())
	files := safety.Files{Policy: path}
	if err := k.LoadFiles(files); err != nil {
		t.Fatal(err)
	}
	firstHash := k.Status().GetActive().GetHash()
	if firstHash != mustLoad(t, "approval.yaml").Hash() {
		t.Fatalf("LoadFiles: active %v", k.Status().GetActive())
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- k.Watch(ctx, files, reload) }()

	// Watch adds its watch on the directory after it starts; rewrite the
	// file until the change is seen, so the test does not depend on when.
	var active *cortexv1.PolicyInfo
	retrying(t, "the rewritten policy to be loaded", func() { writeFile(t, path, second) }, func() bool {
		active = k.Status().GetActive()
		return active.GetHash() != firstHash
	})
	if active.GetHash() != mustLoad(t, "shadow.yaml").Hash() || active.GetOrigin() != "file "+path {
		t.Fatalf("after the rewrite: active %v", active)
	}
	goodHash := active.GetHash()

	// A broken file changes nothing and is reported.
	writeFile(t, path, readTestdata(t, "broken.yaml"))
	waitFor(t, "the broken file to be reported", func() bool { return strings.Contains(k.Status().GetLastError(), "deny-typo") })
	st := k.Status()
	if st.GetActive().GetHash() != goodHash {
		t.Errorf("a broken file replaced the policy: %v", st.GetActive())
	}
	if !strings.Contains(st.GetLastError(), path+":10:") || !strings.Contains(st.GetLastError(), "deny-typo") {
		t.Errorf("last_error %q does not name %s:10 and the rule", st.GetLastError(), path)
	}

	// Restore the text in force: the watcher sees nothing new to load; the
	// reload signal loads it again regardless and clears the error.
	loadedAt := st.GetActive().GetLoadedAt().AsTime()
	writeFile(t, path, second)
	reload <- syscall.SIGHUP
	waitFor(t, "the reload signal to reload the file", func() bool {
		st := k.Status()
		return st.GetLastError() == "" && st.GetActive().GetLoadedAt().AsTime().After(loadedAt)
	})
	if got := k.Status().GetActive().GetHash(); got != goodHash {
		t.Errorf("after the reload: active %s, want %s", got, goodHash)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watch returned %v after ctx ended, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return within 5s of ctx ending")
	}
}

func TestWatchShadowFile(t *testing.T) {
	dir := t.TempDir()
	path, shadowPath := filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "shadow.yaml")
	writeFile(t, path, readTestdata(t, "no_prompt.yaml"))
	writeFile(t, shadowPath, readTestdata(t, "shadow.yaml"))
	k := safety.NewKernel("k1", nil, discard())
	files := safety.Files{Policy: path, Shadow: shadowPath}
	if err := k.LoadFiles(files); err != nil {
		t.Fatal(err)
	}
	if st := k.Status(); st.GetShadow().GetName() != "strict" || st.GetActive().GetName() != "no-prompt" {
		t.Fatalf("LoadFiles: status %v", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Watch(ctx, files, nil) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()
	approval := readTestdata(t, "approval.yaml")
	retrying(t, "the rewritten shadow policy to be loaded", func() { writeFile(t, shadowPath, approval) }, func() bool {
		return k.Status().GetShadow().GetName() == "approval"
	})
	if got := k.Status().GetActive().GetName(); got != "no-prompt" {
		t.Errorf("rewriting the shadow file changed the active policy to %q", got)
	}
}

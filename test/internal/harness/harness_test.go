package harness

import "testing"

// TestCrashLine checks that an unexpected exit names the crash that caused
// it, not only the tail of the goroutine dump.
func TestCrashLine(t *testing.T) {
	for _, tc := range []struct{ out, want string }{
		{"started\npanic: boom\n\ngoroutine 1 [running]:\nmain.main()\n", "panic: boom"},
		{"fatal error: concurrent map writes\n", "fatal error: concurrent map writes"},
		{"SIGQUIT: quit\nPC=0x496ac1 m=0 sigcode=0\n", "SIGQUIT: quit"},
		{"worker running; Ctrl-C or SIGTERM stops it\n", ""},
	} {
		if got := crashLine([]byte(tc.out)); got != tc.want {
			t.Errorf("crashLine(%q) = %q, want %q", tc.out, got, tc.want)
		}
	}
}

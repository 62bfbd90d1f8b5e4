package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestResolve(t *testing.T) {
	vcs := func(settings ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/cortex-os/core", Version: "(devel)"}}
		for i := 0; i+1 < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi
	}
	installed := &debug.BuildInfo{Main: debug.Module{Path: "github.com/cortex-os/core", Version: "v1.4.0"}}
	tests := []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  Info
	}{
		{name: "stamped values win over build info", version: "1.2.0", commit: "abc123", date: "2026-11-23T10:00:00Z",
			bi:   vcs("vcs.revision", "fff", "vcs.time", "2020-01-01T00:00:00Z"),
			want: Info{Version: "1.2.0", Commit: "abc123", Date: "2026-11-23T10:00:00Z"}},
		{name: "go install records the module version", bi: installed,
			want: Info{Version: "v1.4.0", Commit: "unknown"}},
		{name: "go build in a checkout records vcs settings",
			bi:   vcs("vcs.revision", "0123abcd", "vcs.time", "2026-11-20T08:30:00Z", "vcs.modified", "false"),
			want: Info{Version: "dev", Commit: "0123abcd", Date: "2026-11-20T08:30:00Z"}},
		{name: "a modified tree is marked dirty", bi: vcs("vcs.revision", "0123abcd", "vcs.modified", "true"),
			want: Info{Version: "dev", Commit: "0123abcd-dirty"}},
		{name: "no build info at all", want: Info{Version: "dev", Commit: "unknown"}},
		{name: "(devel) is not a version", bi: vcs(), want: Info{Version: "dev", Commit: "unknown"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := resolve(tt.version, tt.commit, tt.date, tt.bi)
			tt.want.GoVersion, tt.want.Platform = runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH
			if got != tt.want {
				t.Errorf("resolve() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestInfoString(t *testing.T) {
	i := Info{Version: "1.2.0", Commit: "abc123", Date: "2026-11-23T10:00:00Z", GoVersion: "go1.26.8", Platform: "linux/arm64"}
	if got, want := i.String(), "1.2.0 (commit abc123, built 2026-11-23T10:00:00Z, go1.26.8, linux/arm64)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	i.Date = ""
	if got, want := i.String(), "1.2.0 (commit abc123, go1.26.8, linux/arm64)"; got != want {
		t.Errorf("String() without a date = %q, want %q", got, want)
	}
}

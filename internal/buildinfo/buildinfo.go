// Package buildinfo owns what cortexctl knows about its own build: the
// version, commit and date that a release stamps in with the linker
// (-ldflags "-X github.com/cortex-os/core/internal/buildinfo.Version=..."),
// and the fallbacks read from the Go build info when nothing was stamped
// (go install module@version, go build in a git checkout). It imports
// nothing of the project, does no I/O and never fails.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Stamped at release time with -ldflags -X (see .goreleaser.yaml); empty in
// a plain go build.
var (
	Version = ""
	Commit  = ""
	Date    = ""
)

// Info describes one build of cortexctl.
type Info struct {
	Version   string // a release version, the module version of go install, or "dev"
	Commit    string // the git commit, with "-dirty" for a modified tree; "unknown" when not known
	Date      string // RFC 3339 commit or build date; empty when not known
	GoVersion string
	Platform  string // GOOS/GOARCH
}

// Get returns the running binary's build information.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return resolve(Version, Commit, Date, bi)
}

// resolve prefers the stamped values and falls back to bi (which may be
// nil): the main module's version as go install records it, then the
// vcs.* settings that go build records in a git checkout.
func resolve(version, commit, date string, bi *debug.BuildInfo) Info {
	info := Info{Version: version, Commit: commit, Date: date, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi != nil {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		var revision, modified, vcsTime string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value
			case "vcs.time":
				vcsTime = s.Value
			}
		}
		if info.Commit == "" && revision != "" {
			info.Commit = revision
			if modified == "true" {
				info.Commit += "-dirty"
			}
		}
		if info.Date == "" {
			info.Date = vcsTime
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// String is the one-line form `cortexctl version` prints after the name:
// "1.2.0 (commit 3f2a..., built 2026-11-23T10:00:00Z, go1.26.8, linux/amd64)";
// the date is left out when it is not known.
func (i Info) String() string {
	var b strings.Builder
	b.WriteString(i.Version + " (commit " + i.Commit)
	if i.Date != "" {
		b.WriteString(", built " + i.Date)
	}
	b.WriteString(", " + i.GoVersion + ", " + i.Platform + ")")
	return b.String()
}

// Package buildinfo says which build of the broker is running, from what
// the Go toolchain records in the binary (runtime/debug.BuildInfo).
package buildinfo

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Info describes the running binary.
type Info struct {
	// Version is the main module's version: a release tag for
	// `go install …@v1.2.3`, "(devel)" for a build from a checkout.
	Version string
	// GoVersion is the toolchain that built the binary, e.g. "go1.26.8".
	GoVersion string
	// Revision is the VCS revision of a build from a checkout; "" when
	// unknown.
	Revision string
	// Time is the commit time of Revision (RFC 3339); "" when unknown.
	Time string
	// Modified reports uncommitted changes in the checkout at build time.
	Modified bool
}

// Read returns the build information of the running binary. Fields the
// binary does not record are "" ("unknown" for Version).
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "unknown"}
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if info.Version == "" {
		info.Version = "unknown"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// String is one line: "tokenbroker (devel) go1.26.8 revision 0123abcd… (modified) 2026-12-05T18:00:00Z".
func (i Info) String() string {
	parts := []string{"tokenbroker", i.Version, i.GoVersion}
	if i.Revision != "" {
		rev := "revision " + i.Revision
		if i.Modified {
			rev += " (modified)"
		}
		parts = append(parts, rev)
	}
	if i.Time != "" {
		parts = append(parts, i.Time)
	}
	return strings.Join(parts, " ")
}

// RevisionLabel is the revision as a metric label: the revision, with
// "-modified" appended for a tree with uncommitted changes.
func (i Info) RevisionLabel() string {
	if i.Modified && i.Revision != "" {
		return fmt.Sprintf("%s-modified", i.Revision)
	}
	return i.Revision
}

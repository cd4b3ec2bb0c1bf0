package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	tests := []struct {
		name         string
		give         debug.BuildInfo
		wantString   string
		wantRevision string
	}{
		{
			name:       "release",
			give:       debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}},
			wantString: "tokenbroker v1.4.0 go1.26.8",
		},
		{
			name: "checkout with changes",
			give: debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
				{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-12-05T18:00:00Z"}, {Key: "vcs.modified", Value: "true"},
			}},
			wantString:   "tokenbroker (devel) go1.26.8 revision 0123abcd (modified) 2026-12-05T18:00:00Z",
			wantRevision: "0123abcd-modified",
		},
		{
			name:       "nothing recorded",
			give:       debug.BuildInfo{GoVersion: "go1.26.8"},
			wantString: "tokenbroker unknown go1.26.8",
		},
	}
	for _, tt := range tests {
		got := fromBuildInfo(&tt.give)
		if got.String() != tt.wantString || got.RevisionLabel() != tt.wantRevision {
			t.Errorf("%s: %q, revision label %q; want %q, %q", tt.name, got, got.RevisionLabel(), tt.wantString, tt.wantRevision)
		}
	}
}

func TestReadNamesTheRunningToolchain(t *testing.T) {
	if got := Read().GoVersion; got != runtime.Version() {
		t.Errorf("Read().GoVersion = %q, want %q", got, runtime.Version())
	}
}

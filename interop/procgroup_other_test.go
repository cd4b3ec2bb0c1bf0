//go:build !linux

package interop_test

import "os/exec"

// ownProcessGroup leaves cmd as it is: cancelling its context kills the
// server process (server.mjs starts no processes of its own).
func ownProcessGroup(*exec.Cmd) {}

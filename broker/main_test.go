package broker

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: every
// watch, fetch and session a Broker starts must be stopped by its Close, and
// every embedded etcd and its clients by the test's cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

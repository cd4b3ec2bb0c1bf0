//go:build !unix

package embedetcd

// dbLocked cannot tell on this system; etcd's own wait applies.
func dbLocked(string) bool { return false }

//go:build !unix

package wsauth

import "testing"

// mkfifo skips the test: named pipes are a Unix thing.
func mkfifo(t *testing.T, path string) {
	t.Skip("no named pipes on this system")
}

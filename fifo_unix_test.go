//go:build unix

package wsauth

import (
	"syscall"
	"testing"
)

// mkfifo makes a named pipe at path: opening it for reading blocks until
// a writer comes, so a reader that does not check the file type hangs.
func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
}

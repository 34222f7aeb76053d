//go:build unix

package wsauth

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// returnsSoon runs f and returns its error, or fails the test if f has not
// returned within 10 s, a hang guard rather than a timing check. A read
// stuck on the FIFO is then released by opening the FIFO for writing, so
// that a failed test does not leave the process stuck behind it.
func returnsSoon(t *testing.T, fifo string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
	}
	if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		w.Close()
	}
	select {
	case err := <-done:
		if err == nil {
			_ = caddy.Stop()
		}
	case <-time.After(10 * time.Second):
	}
	t.Fatal("still blocked after 10 s: the FIFO was opened for reading")
	return nil
}

// TestBlocklistFileFIFO: a FIFO as blocklist_file fails the config at
// once, saying it is not a regular file, instead of blocking the load on
// an open that waits for a writer.
func TestBlocklistFileFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "blocklist.fifo")
	mkfifo(t, fifo)
	caddyMu.Lock()
	defer caddyMu.Unlock()
	cfg := testConfig(fmt.Sprintf("127.0.0.1:%d", freePort(t)), site("blocklist_file "+fifo), "127.0.0.1:9")
	err := returnsSoon(t, fifo, func() error { return loadCaddyfile(cfg) })
	if err == nil {
		_ = caddy.Stop()
		t.Fatal("a FIFO as blocklist_file was accepted")
	}
	if !strings.Contains(err.Error(), "not a regular file") || !strings.Contains(err.Error(), fifo) {
		t.Errorf("error %q, want one naming %s and saying it is not a regular file", err, fifo)
	}
}

// TestBlocklistLinkAndSwappedFIFO: a device or a directory is refused when the
// config is loaded; a file replaced by a FIFO later is refused by the
// watcher, and the previous list stays in force; a link to a regular file
// is fine.
func TestBlocklistLinkAndSwappedFIFO(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{"/dev/zero", dir} {
		if _, err := os.Stat(path); err != nil {
			t.Logf("skipping %s: %v", path, err)
			continue
		}
		_, key, err := acquireBlocklist(path)
		if err == nil {
			releaseBlocklist(key)
			t.Errorf("blocklist_file %s: accepted", path)
		} else if !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("blocklist_file %s: %v, want not a regular file", path, err)
		}
	}

	real := filepath.Join(dir, "real.txt")
	if err := os.WriteFile(real, []byte(`sub:"John Doe"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(dir, "blocklist.txt")
	if err := os.Symlink(real, list); err != nil {
		t.Fatal(err)
	}
	bf, key, err := acquireBlocklist(list)
	if err != nil {
		t.Fatalf("a link to a regular file: %v", err)
	}
	defer releaseBlocklist(key)
	bf.cancel() // the test plays the watcher

	if err := os.Remove(list); err != nil {
		t.Fatal(err)
	}
	mkfifo(t, list)
	fi, err := os.Stat(list)
	if err != nil {
		t.Fatal(err)
	}
	if !bf.changed(fi) {
		t.Fatal("a file replaced by a FIFO is not seen as changed")
	}
	err = returnsSoon(t, list, bf.reload)
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("reload of a FIFO: %v, want not a regular file", err)
	}
	if !bf.list().blockedToken("", "John Doe", time.Now()) {
		t.Error("the previous list is no longer in force")
	}
}

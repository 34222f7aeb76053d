package wsauth

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// The blocklist file: one entry a line, each optionally followed by an
// RFC 3339 expiry; "#" at the start of a word starts a comment.
//
//	jti:<token id> [<expiry>]
//	sub:<user>     [<expiry>]
//	ip:<address or CIDR> [<expiry>]
//
// A value is one word, in which "#" is part of the value (jti:abc#def), or
// a double-quoted Go string literal holding anything, with backslash
// escapes (\" \\ \t \u00e9 ...): sub:"John Doe", sub:"say \"hi\" # 2".
// The closing quote is followed by a space or the end of the line. A quoted
// value is not empty, has valid escapes and is valid UTF-8.
//
// The file must be a regular file, or a link to one: a FIFO, a device or a
// directory is refused before anything is read from it. The file is read
// when a config first names it (an error there fails the config) and read
// again when it changes; a version that fails to parse keeps the previous
// list in force and logs the line that failed.

const (
	// maxBlocklistFile bounds what is read of a blocklist file.
	maxBlocklistFile = 16 << 20
	maxBlocklistLine = 64 << 10
)

// blocklistPoll is how often the file is checked for changes; a variable
// to be shortened by tests.
var blocklistPoll = 2 * time.Second

// blockSet is one parsed version of the list. Zero expiry: no expiry.
type blockSet struct {
	jti  map[string]time.Time
	sub  map[string]time.Time
	nets map[netip.Prefix]time.Time // addresses as /32 or /128 prefixes
	bits []int                      // the prefix lengths in nets, longest first
}

func live(expires time.Time, now time.Time) bool {
	return expires.IsZero() || now.Before(expires)
}

// blockedToken reports whether the token's jti or user is listed.
func (b *blockSet) blockedToken(jti, user string, now time.Time) bool {
	if exp, ok := b.jti[jti]; ok && jti != "" && live(exp, now) {
		return true
	}
	exp, ok := b.sub[user]
	return ok && live(exp, now)
}

// blockedIP reports whether ip is listed, alone or in a prefix: one map
// lookup per prefix length the list uses.
func (b *blockSet) blockedIP(ip string, now time.Time) bool {
	if len(b.nets) == 0 {
		return false
	}
	addr, ok := parseIP(ip)
	if !ok {
		return false
	}
	for _, bits := range b.bits {
		if bits > addr.BitLen() {
			continue
		}
		p, _ := addr.Prefix(bits)
		if exp, ok := b.nets[p]; ok && live(exp, now) {
			return true
		}
	}
	return false
}

// parseIPEntry parses an ip: value, an address or a CIDR, into the prefix
// the lookups use: IPv4-mapped IPv6 as IPv4, masked.
func parseIPEntry(value string) (netip.Prefix, error) {
	if !strings.Contains(value, "/") {
		a, err := netip.ParseAddr(value)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("invalid IP address %q", value)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(value)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", value)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: an IPv4-mapped prefix needs 96 bits or more", value)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func newBlockSet() *blockSet {
	return &blockSet{
		jti:  make(map[string]time.Time),
		sub:  make(map[string]time.Time),
		nets: make(map[netip.Prefix]time.Time),
	}
}

// add puts an entry in the set, replacing one of the same kind and value.
func (b *blockSet) add(kind, value string, expires time.Time) error {
	switch kind {
	case "jti":
		b.jti[value] = expires
	case "sub":
		b.sub[value] = expires
	case "ip":
		p, err := parseIPEntry(value)
		if err != nil {
			return err
		}
		if _, seen := b.nets[p]; !seen && !slices.Contains(b.bits, p.Bits()) {
			b.bits = append(b.bits, p.Bits())
			slices.SortFunc(b.bits, func(x, y int) int { return y - x })
		}
		b.nets[p] = expires
	default:
		return fmt.Errorf("unknown kind %q (want jti, sub or ip)", kind)
	}
	return nil
}

// remove takes the entry of kind and value out, and reports whether there
// was one.
func (b *blockSet) remove(kind, value string) (bool, error) {
	var found bool
	switch kind {
	case "jti":
		_, found = b.jti[value]
		delete(b.jti, value)
	case "sub":
		_, found = b.sub[value]
		delete(b.sub, value)
	case "ip":
		p, err := parseIPEntry(value)
		if err != nil {
			return false, err
		}
		_, found = b.nets[p]
		delete(b.nets, p)
		if found {
			for q := range b.nets {
				if q.Bits() == p.Bits() {
					return true, nil // the prefix length is still in use
				}
			}
			b.bits = slices.DeleteFunc(b.bits, func(n int) bool { return n == p.Bits() })
		}
	default:
		return false, fmt.Errorf("unknown kind %q (want jti, sub or ip)", kind)
	}
	return found, nil
}

// get returns the expiry of the entry of kind and value, and whether there
// is one (expired or not).
func (b *blockSet) get(kind, value string) (expires time.Time, found bool, err error) {
	switch kind {
	case "jti":
		expires, found = b.jti[value]
	case "sub":
		expires, found = b.sub[value]
	case "ip":
		p, err := parseIPEntry(value)
		if err != nil {
			return time.Time{}, false, err
		}
		expires, found = b.nets[p]
	default:
		return time.Time{}, false, fmt.Errorf("unknown kind %q (want jti, sub or ip)", kind)
	}
	return expires, found, nil
}

// each calls fn for every entry in force at now, an ip: value written as
// entryValue writes it.
func (b *blockSet) each(now time.Time, fn func(kind, value string, expires time.Time)) {
	for v, exp := range b.jti {
		if live(exp, now) {
			fn("jti", v, exp)
		}
	}
	for v, exp := range b.sub {
		if live(exp, now) {
			fn("sub", v, exp)
		}
	}
	for p, exp := range b.nets {
		if live(exp, now) {
			fn("ip", prefixValue(p), exp)
		}
	}
}

// entryValue is value as a set holds it: an ip: value as its masked
// prefix (10.1.2.3/8 is 10.0.0.0/8, ::ffff:192.0.2.1 is 192.0.2.1).
func entryValue(kind, value string) (string, error) {
	switch kind {
	case "jti", "sub":
		return value, nil
	case "ip":
		p, err := parseIPEntry(value)
		if err != nil {
			return "", err
		}
		return prefixValue(p), nil
	}
	return "", fmt.Errorf("unknown kind %q (want jti, sub or ip)", kind)
}

// prefixValue writes a prefix of the set as an entry's value: a single
// address without its length.
func prefixValue(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// parseBlocklist reads a blocklist; an error names the line.
func parseBlocklist(r io.Reader) (*blockSet, error) {
	b := newBlockSet()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxBlocklistLine)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 {
			text = strings.TrimPrefix(text, "\uFEFF") // a byte order mark
		}
		kind, value, expires, ok, err := parseBlocklistLine(text)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", line, err)
		}
		if !ok {
			continue // blank or a comment
		}
		if err := b.add(kind, value, expires); err != nil {
			return nil, fmt.Errorf("line %d: %v", line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %v (lines are limited to %d bytes)", line+1, err, maxBlocklistLine)
	}
	return b, nil
}

// parseBlocklistLine parses one line; ok is false for a line without an
// entry. Words are separated by white space (unicode.IsSpace); "#" starts a
// comment where a word starts, so that an unquoted value may hold one
// (jti:abc#def). A value that starts with a double quote is a Go string
// literal, up to its closing quote, which a space or the end of the line
// must follow.
func parseBlocklistLine(text string) (kind, value string, expires time.Time, ok bool, err error) {
	rest := strings.TrimLeftFunc(text, unicode.IsSpace)
	if rest == "" || rest[0] == '#' {
		return "", "", time.Time{}, false, nil
	}
	word, _ := nextWord(rest)
	i := strings.IndexByte(word, ':')
	if i < 0 {
		return "", "", time.Time{}, false, errors.New("want <kind>:<value> [<expiry>]")
	}
	kind, rest = rest[:i], rest[i+1:]
	quoted := strings.HasPrefix(rest, `"`)
	if quoted {
		if value, rest, err = quotedValue(rest); err != nil {
			return "", "", time.Time{}, false, err
		}
		if value == "" {
			return "", "", time.Time{}, false, errors.New("empty quoted value")
		}
	} else {
		value, rest = nextWord(rest)
	}
	if value == "" {
		return "", "", time.Time{}, false, errors.New("want <kind>:<value>, kind jti, sub or ip")
	}
	rest = strings.TrimLeftFunc(rest, unicode.IsSpace)
	if rest != "" && rest[0] != '#' {
		var word string
		word, rest = nextWord(rest)
		if expires, err = time.Parse(time.RFC3339, word); err != nil {
			if !quoted {
				return "", "", time.Time{}, false, fmt.Errorf("expiry is not RFC 3339: %q (a value with spaces is written in double quotes)", word)
			}
			return "", "", time.Time{}, false, fmt.Errorf("expiry is not RFC 3339: %q", word)
		}
		rest = strings.TrimLeftFunc(rest, unicode.IsSpace)
		if rest != "" && rest[0] != '#' {
			return "", "", time.Time{}, false, errors.New("want <kind>:<value> [<expiry>]")
		}
	}
	return kind, value, expires, true, nil
}

// nextWord splits s, which starts with a word, after that word.
func nextWord(s string) (word, rest string) {
	if i := strings.IndexFunc(s, unicode.IsSpace); i >= 0 {
		return s[:i], s[i:]
	}
	return s, ""
}

// quotedValue decodes the Go string literal that s starts with and returns
// the rest of s after it.
func quotedValue(s string) (value, rest string, err error) {
	end := 1
	for end < len(s) && s[end] != '"' {
		if s[end] == '\\' {
			end++
		}
		end++
	}
	if end >= len(s) {
		return "", "", errors.New("quoted value without its closing quote")
	}
	lit, rest := s[:end+1], s[end+1:]
	if !utf8.ValidString(lit) {
		return "", "", errors.New("quoted value is not valid UTF-8")
	}
	if value, err = strconv.Unquote(lit); err != nil {
		return "", "", errors.New("quoted value has an invalid escape")
	}
	if !utf8.ValidString(value) { // \x or octal escapes
		return "", "", errors.New("quoted value is not valid UTF-8")
	}
	if rest != "" {
		if r, _ := utf8.DecodeRuneInString(rest); !unicode.IsSpace(r) {
			return "", "", errors.New("want a space or the end of the line after a quoted value")
		}
	}
	return value, rest, nil
}

// blocklistFile is a blocklist file kept up to date.
type blocklistFile struct {
	subscribers // told of each version put in force after the first
	path        string
	cur         atomic.Pointer[blockSet]
	seen        os.FileInfo        // of the version last read; only the watcher touches it
	lastErr     string             // of the last failed reload, logged once
	cancel      context.CancelFunc // stops the watcher
}

// logger is Caddy's current default logger: a pooled list outlives the
// config, and the logs, it was created with.
func (bf *blocklistFile) logger() *zap.Logger { return caddy.Log().Named("http.handlers.ws_auth") }

// blocklists holds the blocklist files of the process by absolute path: one
// watcher per file, shared by every handler that names it, and kept across
// config reloads while some handler uses it.
var blocklists = caddy.NewUsagePool()

// Destruct stops the file's watcher.
func (bf *blocklistFile) Destruct() error {
	bf.cancel()
	return nil
}

// acquireBlocklist returns the pooled blocklist for path, reading it the
// first time; release it with releaseBlocklist(key).
func acquireBlocklist(path string) (bf *blocklistFile, key string, err error) {
	key, err = filepath.Abs(path)
	if err != nil {
		return nil, "", fmt.Errorf("blocklist_file %s: %v", path, err)
	}
	val, _, err := blocklists.LoadOrNew(key, func() (caddy.Destructor, error) {
		ctx, cancel := context.WithCancel(context.Background())
		bf := &blocklistFile{path: key, cancel: cancel}
		err := bf.reload()
		for tries := 0; errors.Is(err, errInFlux) && tries < 5; tries++ {
			time.Sleep(50 * time.Millisecond)
			err = bf.reload()
		}
		if err != nil {
			cancel()
			return nil, err
		}
		go bf.watch(ctx)
		return bf, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("blocklist_file %s: %v", path, err)
	}
	return val.(*blocklistFile), key, nil
}

func releaseBlocklist(key string) { _, _ = blocklists.Delete(key) }

func (bf *blocklistFile) list() *blockSet { return bf.cur.Load() }

// BlockedIP, BlockedToken and Subscribe make the file a Blocklist: lookups
// read the version in force, without a lock.
func (bf *blocklistFile) BlockedIP(ip string, now time.Time) bool {
	return bf.list().blockedIP(ip, now)
}

func (bf *blocklistFile) BlockedToken(jti, user string, now time.Time) bool {
	return bf.list().blockedToken(jti, user, now)
}

// watch reads the file again when it changes, until ctx is done.
func (bf *blocklistFile) watch(ctx context.Context) {
	t := time.NewTicker(blocklistPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fi, err := os.Stat(bf.path)
		if err != nil {
			bf.failed(fmt.Errorf("unreadable: %v", err))
			continue
		}
		if !bf.changed(fi) {
			continue
		}
		if err := bf.reload(); err != nil {
			if !errors.Is(err, errInFlux) {
				bf.failed(err)
			}
			continue
		}
		bf.lastErr = ""
		bf.logger().Info("blocklist file reloaded", zap.String("file", bf.path))
	}
}

// failed logs a failed reload, once for each different failure.
func (bf *blocklistFile) failed(err error) {
	if err.Error() == bf.lastErr {
		return
	}
	bf.lastErr = err.Error()
	bf.logger().Error("blocklist file not loaded; keeping the previous list", zap.String("file", bf.path), zap.Error(err))
}

// changed reports whether fi is another version of the file than the one
// last read: another file at the path (replaced by a rename or a copy that
// kept the time), or another size or modification time.
func (bf *blocklistFile) changed(fi os.FileInfo) bool {
	return bf.seen == nil || !os.SameFile(bf.seen, fi) ||
		!fi.ModTime().Equal(bf.seen.ModTime()) || fi.Size() != bf.seen.Size()
}

// errInFlux is a file that changed while it was read: it is read again at
// the next check rather than half-read now.
var errInFlux = errors.New("file changed while it was read")

// reload reads and parses the file, and puts it in force if it parses. The
// file's stat is recorded either way, so a bad version is reported once.
func (bf *blocklistFile) reload() error {
	f, fi, err := openRegular(bf.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi.Size() > maxBlocklistFile {
		bf.seen = fi
		return fmt.Errorf("larger than %d bytes", maxBlocklistFile)
	}
	set, err := parseBlocklist(io.LimitReader(f, maxBlocklistFile))
	if after, serr := os.Stat(bf.path); serr != nil || !os.SameFile(fi, after) ||
		!after.ModTime().Equal(fi.ModTime()) || after.Size() != fi.Size() {
		return errInFlux
	}
	bf.seen = fi
	if err != nil {
		return err
	}
	if bf.cur.Swap(set) != nil {
		bf.notify()
	}
	return nil
}

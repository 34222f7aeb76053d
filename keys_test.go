package wsauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func selfSigned(t *testing.T, pub, priv any) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tokens.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestPublicKeyForms: public_key takes SPKI, PKCS#1 and certificate PEM,
// through a real Caddy.
func TestPublicKeyForms(t *testing.T) {
	k := testKeys()
	cases := []struct {
		name   string
		file   string
		method jwt.SigningMethod
		signer any
	}{
		{"RSA certificate", writePEM(t, "CERTIFICATE", selfSigned(t, &k.rsa.PublicKey, k.rsa)), jwt.SigningMethodRS256, k.rsa},
		{"ECDSA certificate", writePEM(t, "CERTIFICATE", selfSigned(t, &k.ec.PublicKey, k.ec)), jwt.SigningMethodES256, k.ec},
		{"RSA PKCS#1", writePEM(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)), jwt.SigningMethodPS256, k.rsa},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t)
			addr := startCaddy(t, `
	ws_auth {
		public_key `+tc.file+`
	}
	reverse_proxy %UPSTREAM%`, up.addr())
			c, resp, err := dial(addr, "/ws", dialOpts{query: "token=" + sign(t, tc.method, tc.signer, claims("alice"), "")})
			if got := outcome(t, c, resp, err); got != "accepted" {
				t.Errorf("signed by the key: %s", got)
			}
			c, resp, err = dial(addr, "/ws", dialOpts{query: "token=" + sign(t, jwt.SigningMethodHS256, []byte(testSecret), claims("alice"), "")})
			if got := outcome(t, c, resp, err); got != "close 1008 invalid" {
				t.Errorf("HS256 against a public key: %s", got)
			}
		})
	}
}

// TestWeakPublicKeysRefused: keys too weak to trust fail the config load.
func TestWeakPublicKeysRefused(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	smallDER, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	p224DER, _ := x509.MarshalPKIXPublicKey(&p224.PublicKey)
	for name, tc := range map[string]struct{ file, want string }{
		"RSA 1024": {writePEM(t, "PUBLIC KEY", smallDER), "too short"},
		"P-224":    {writePEM(t, "PUBLIC KEY", p224DER), "unsupported ECDSA curve"},
		"empty":    {writePEM(t, "SOMETHING ELSE", []byte{1}), "no public key found"},
	} {
		_, err := loadPEMPublicKeys(tc.file)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", name, err, tc.want)
		}
	}
}

// TestKeyFilesBounded: public_key and jwks_file read at most 1 MiB and
// only regular files, so that a wrong path (a device, a FIFO, a huge file)
// fails the config load with the option and the file named, instead of
// growing the server until it is killed or hanging `caddy validate`.
func TestKeyFilesBounded(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(big, []byte(strings.Repeat("x", maxKeyFile+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "keys.fifo")
	mkfifo(t, fifo)
	cases := []struct {
		name, file, want string
	}{
		{"over 1 MiB", big, "larger than 1048576 bytes"},
		{"FIFO", fifo, "not a regular file"},
		{"directory", dir, "not a regular file"},
		{"/dev/zero", "/dev/zero", "not a regular file"},
		// A regular file whose size (0) says nothing of what it holds, as
		// one that grows after the Stat: the read itself must stop.
		{"/proc/kallsyms", "/proc/kallsyms", "larger than 1048576 bytes"},
	}
	for _, opt := range []string{"public_key", "jwks_file"} {
		for _, tc := range cases {
			t.Run(opt+"/"+tc.name, func(t *testing.T) {
				if _, err := os.Lstat(tc.file); err != nil {
					t.Skipf("%s: %v", tc.file, err)
				}
				if strings.HasPrefix(tc.file, "/proc/") && !holdsMore(tc.file, maxKeyFile) {
					t.Skipf("%s holds less than %d bytes here", tc.file, maxKeyFile+1)
				}
				stage, err := validateSite("\tws_auth {\n\t\t" + opt + " " + tc.file + "\n\t}")
				if err == nil {
					t.Fatalf("config loaded, want an error containing %q", tc.want)
				}
				if stage != "provision" {
					t.Errorf("error at %s, want at provision: %v", stage, err)
				}
				for _, w := range []string{opt + " " + tc.file + ": ", tc.want} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error\n\t%v\nwant it to contain %q", err, w)
					}
				}
			})
		}
	}
}

// holdsMore reports whether reading file yields more than n bytes.
func holdsMore(file string, n int64) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	got, _ := io.CopyN(io.Discard, f, n+1)
	return got > n
}

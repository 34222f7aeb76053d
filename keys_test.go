package wsauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// writePEM writes one PEM block to a file and returns its path.
func writePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

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

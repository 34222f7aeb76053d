package wsauth

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
)

// Tests for the findings of the outside review (issue 7), each shown
// through a real Caddy where the behaviour is Caddy's.

// octSecret is a symmetric key published in a local JWK Set.
var octSecret = []byte("an-oct-key-from-a-local-jwk-set-32+bytes")

// octJWK is a symmetric JWK (its "k" is the secret itself).
func octJWK(t testing.TB, kid string, alg jwkset.ALG) jwkset.JWKMarshal {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(octSecret, jwkset.JWKOptions{
		Marshal:  jwkset.JWKMarshalOptions{Private: true},
		Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: alg},
	})
	if err != nil {
		t.Fatal(err)
	}
	return j.Marshal()
}

// TestMixedKeySetsNeverPanic: a symmetric key from a local set next to a
// remote set, and an oct key without alg in a remote set, made the key
// lookup compare uncomparable keyfunc values and panic on any HS256
// token; the client got EOF instead of a Close frame.
func TestMixedKeySetsNeverPanic(t *testing.T) {
	keys, evil := testKeys(), attackerKeys()
	c := claims("alice")

	t.Run("local oct and remote set", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "oct.json")
		if err := os.WriteFile(file, jwkSetJSON(t, octJWK(t, "oct-1", jwkset.AlgHS256)), 0o600); err != nil {
			t.Fatal(err)
		}
		srv := newJWKSServer(t, standardSet(t)...)
		up := newUpstream(t)
		addr := startCaddy(t, jwksSite(srv.URL, "1s", "jwks_file "+file+"\n\t\talgorithms HS256 RS256"), up.addr())
		checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
			{"HS256 by a made-up secret, no kid", sign(t, jwt.SigningMethodHS256, []byte("made-up"), c, ""), "invalid"},
			{"HS256 by a made-up secret, kid of the oct key", sign(t, jwt.SigningMethodHS256, []byte("made-up"), c, "oct-1"), "invalid"},
			{"HS256 by the oct key, no kid", sign(t, jwt.SigningMethodHS256, octSecret, c, ""), "accepted"},
			{"HS256 by the oct key, its kid", sign(t, jwt.SigningMethodHS256, octSecret, c, "oct-1"), "accepted"},
			{"RS256 by the remote key, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), "accepted"},
			{"RS256 by another key, no kid", sign(t, jwt.SigningMethodRS256, evil.rsa, c, ""), "invalid"},
		}))
	})

	t.Run("remote oct without alg", func(t *testing.T) {
		set := append(standardSet(t), octJWK(t, "oct-remote", ""))
		srv := newJWKSServer(t, set...)
		up := newUpstream(t)
		addr := startCaddy(t, jwksSite(srv.URL, "1s", "algorithms HS256 RS256"), up.addr())
		checkUpstreamSaw(t, up, runTokenCases(t, addr, "close", []attackCase{
			{"RS256 by the remote key, no kid", sign(t, jwt.SigningMethodRS256, keys.rsa, c, ""), "accepted"},
			{"RS256 by another key, no kid", sign(t, jwt.SigningMethodRS256, evil.rsa, c, ""), "invalid"},
			// A secret served over HTTP is no secret: never used.
			{"HS256 by the served oct key, no kid", sign(t, jwt.SigningMethodHS256, octSecret, c, ""), "invalid"},
			{"HS256 by the served oct key, its kid", sign(t, jwt.SigningMethodHS256, octSecret, c, "oct-remote"), "invalid"},
		}))
	})
}

// fuzzJWKs are the keys a fuzzed key set is made of: every key type, with
// and without kid, with its own alg, none, or another key type's alg.
var fuzzJWKs = sync.OnceValue(func() []jwkset.JWKMarshal {
	k := testKeys()
	var out []jwkset.JWKMarshal
	add := func(key any, kid string, alg jwkset.ALG) {
		j, err := jwkset.NewJWKFromKey(key, jwkset.JWKOptions{
			Marshal:  jwkset.JWKMarshalOptions{Private: true},
			Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: alg},
		})
		if err != nil {
			panic(err)
		}
		out = append(out, j.Marshal())
	}
	for _, kid := range []string{"", "k1"} {
		add(octSecret, kid, jwkset.AlgHS256)
		add(octSecret, kid, "")
		add(octSecret, kid, jwkset.AlgRS256)
		add(&k.rsa.PublicKey, kid, jwkset.AlgRS256)
		add(&k.rsa.PublicKey, kid, "")
		add(&k.rsa.PublicKey, kid, jwkset.AlgHS256)
		add(&k.ec.PublicKey, kid, jwkset.AlgES256)
		add(&k.ec.PublicKey, kid, "")
		add(k.ed.Public(), kid, jwkset.AlgEdDSA)
		add(k.ed.Public(), kid, "")
	}
	return out
})

// FuzzKeyLookup: whatever mix of local and remote sets and static keys,
// and whatever alg and kid a token names, the key lookup never panics,
// never hands out a key of another type than the algorithm's, and never a
// secret that was served over HTTP.
func FuzzKeyLookup(f *testing.F) {
	f.Add(uint32(0b1), uint32(0b10), byte(1), byte(0), "", []byte("sig"))
	f.Add(uint32(0xFFFFF), uint32(0xFFFFF), byte(3), byte(0), "k1", []byte{})
	f.Add(uint32(0), uint32(0b1000), byte(0), byte(1), "", []byte("x"))
	algs := []string{"HS256", "HS384", "RS256", "PS256", "ES256", "ES384", "EdDSA"}
	f.Fuzz(func(t *testing.T, local, remote uint32, static, algIdx byte, kid string, sig []byte) {
		jwks := fuzzJWKs()
		pick := func(mask uint32) []jwkset.JWKMarshal {
			var out []jwkset.JWKMarshal
			for i, j := range jwks {
				if mask&(1<<i) != 0 {
					out = append(out, j)
				}
			}
			return out
		}
		k := &keyring{static: make(map[string]any), ctx: context.Background(), setAlgs: algs}
		if static&1 != 0 {
			k.static["HS256"] = newHMACKey("HS256", []byte(testSecret))
		}
		if static&2 != 0 {
			k.static["RS256"] = &testKeys().rsa.PublicKey
		}
		for _, set := range []struct {
			keys   []jwkset.JWKMarshal
			remote bool
		}{{pick(local), false}, {pick(remote), true}} {
			if len(set.keys) == 0 {
				continue
			}
			kf, err := keyfunc.NewJWKSetJSON(jwkSetJSON(t, set.keys...))
			if err != nil {
				t.Fatal(err)
			}
			k.sets = append(k.sets, jwkSource{kf: kf, remote: set.remote})
		}
		alg := algs[int(algIdx)%len(algs)]
		key, err := k.lookup(alg, kid)
		if err != nil {
			return
		}
		each := []jwt.VerificationKey{key}
		if set, ok := key.(jwt.VerificationKeySet); ok {
			each = set.Keys
		}
		for _, key := range each {
			if !keyFits(alg, key) {
				t.Fatalf("lookup(%s, %q) gave a %T", alg, kid, key)
			}
			if b, ok := key.([]byte); ok && string(b) == string(octSecret) && local == 0 {
				t.Fatalf("lookup(%s, %q) gave a secret served over HTTP", alg, kid)
			}
		}
		verifySignature(jwt.GetSigningMethod(alg), "e30.e30", sig, key)
	})
}

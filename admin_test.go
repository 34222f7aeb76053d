package wsauth

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMemoryBlocklistEntries: the run-time list keeps each entry's reason,
// says whether an entry replaced one in force, lists the entries in force
// with their values as the set holds them, and hands back what it removes.
func TestMemoryBlocklistEntries(t *testing.T) {
	m := newMemoryBlocklist()
	t0 := time.Now()
	for _, tc := range []struct {
		e        Entry
		replaced bool
	}{
		{Entry{Kind: "sub", Value: "alice", Reason: "abuse"}, false},
		{Entry{Kind: "sub", Value: "alice", Reason: "still abuse"}, true},
		{Entry{Kind: "jti", Value: "t-1", Expires: t0.Add(time.Minute)}, false},
		{Entry{Kind: "ip", Value: "203.0.113.9/24", Reason: "scanner"}, false},
		{Entry{Kind: "ip", Value: "203.0.113.0/24"}, true},
		{Entry{Kind: "sub", Value: "old", Expires: t0.Add(-time.Minute), Reason: "expired"}, false},
		{Entry{Kind: "sub", Value: "old", Reason: "again"}, false}, // the one it replaced had expired
	} {
		replaced, err := m.put(tc.e, t0)
		if err != nil || replaced != tc.replaced {
			t.Errorf("put(%+v) = %v, %v; want %v", tc.e, replaced, err, tc.replaced)
		}
	}
	got := m.entries(t0)
	slices.SortFunc(got, func(x, y Entry) int { return strings.Compare(x.Kind+":"+x.Value, y.Kind+":"+y.Value) })
	want := []Entry{
		{Kind: "ip", Value: "203.0.113.0/24"},
		{Kind: "jti", Value: "t-1", Expires: t0.Add(time.Minute)},
		{Kind: "sub", Value: "alice", Reason: "still abuse"},
		{Kind: "sub", Value: "old", Reason: "again"},
	}
	if !slices.EqualFunc(got, want, func(x, y Entry) bool {
		return x.Kind == y.Kind && x.Value == y.Value && x.Expires.Equal(y.Expires) && x.Reason == y.Reason
	}) {
		t.Errorf("entries:\n got %+v\nwant %+v", got, want)
	}
	if es := m.entries(t0.Add(2 * time.Minute)); len(es) != 3 {
		t.Errorf("entries after the jti's expiry: %+v, want 3", es)
	}
	e, found, inForce, err := m.take("sub", "alice", t0)
	if err != nil || !found || !inForce || e.Reason != "still abuse" {
		t.Errorf("take(sub alice) = %+v %v %v %v", e, found, inForce, err)
	}
	if _, found, _, _ := m.take("sub", "alice", t0); found {
		t.Error("take(sub alice) again found it")
	}
	if _, found, inForce, _ := m.take("jti", "t-1", t0.Add(2*time.Minute)); !found || inForce {
		t.Errorf("take of an expired entry: found %v, in force %v; want true, false", found, inForce)
	}
	// A removed entry's reason does not come back with the entry.
	if _, err := m.put(Entry{Kind: "sub", Value: "alice"}, t0); err != nil {
		t.Fatal(err)
	}
	for _, e := range m.entries(t0) {
		if e.Value == "alice" && e.Reason != "" {
			t.Errorf("re-added entry has the old reason %q", e.Reason)
		}
	}
}

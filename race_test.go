//go:build race

package wsauth

// raceEnabled: the race detector is on, and sync.Pool drops objects at
// random, so allocation counts vary.
const raceEnabled = true

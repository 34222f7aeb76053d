//go:build !race

package wsauth

// raceEnabled: see race_test.go.
const raceEnabled = false

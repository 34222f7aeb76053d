//go:build !linux

package wsauth

import "os/exec"

// setDeathSignal does nothing: only Linux kills a child when its parent
// dies.
func setDeathSignal(cmd *exec.Cmd) {}

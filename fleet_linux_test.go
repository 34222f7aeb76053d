package wsauth

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill cmd's process when the test process
// dies, so that a test binary that crashes or times out leaves no server
// behind.
func setDeathSignal(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = new(syscall.SysProcAttr)
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

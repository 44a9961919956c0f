package bgp

import "syscall"

// childAttrs: the speaker is killed if merlin dies, and gets no signal
// meant for merlin's process group (a Ctrl-C stops merlin, which stops it).
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}

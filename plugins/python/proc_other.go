//go:build !unix

package python

import (
	"errors"
	"os"
	"syscall"
)

// sysProcAttr has nothing to add off Unix; the preamble's rlimits need
// Unix too, so New refuses to start there.
func sysProcAttr(namespaces, _ bool) (*syscall.SysProcAttr, error) {
	if namespaces {
		return nil, errors.New("namespaces are a Linux feature")
	}
	return nil, nil
}

// killGroup kills p.
func killGroup(p *os.Process) error { return p.Kill() }

var signalNames = map[syscall.Signal]string{syscall.SIGKILL: "SIGKILL"}

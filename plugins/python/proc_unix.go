//go:build unix && !linux

package python

import (
	"errors"
	"os"
	"syscall"
)

// sysProcAttr starts the interpreter in a process group of its own, as
// nobody when the worker is root. Namespaces are Linux's.
func sysProcAttr(namespaces, root bool) (*syscall.SysProcAttr, error) {
	if namespaces {
		return nil, errors.New("namespaces are a Linux feature")
	}
	a := &syscall.SysProcAttr{Setpgid: true}
	if root {
		a.Credential = &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}
	}
	return a, nil
}

// killGroup kills p's process group.
func killGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }

package python

import (
	"os"
	"syscall"
)

// sysProcAttr starts the interpreter in a process group of its own, killed
// if the worker dies; as nobody when the worker is root; and, with
// namespaces, in new user, network, PID and IPC namespaces. The user
// namespace maps the one user the code runs as to itself, so the code has
// no capability outside it and none inside once it execs.
func sysProcAttr(namespaces, root bool) (*syscall.SysProcAttr, error) {
	a := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	uid, gid := os.Getuid(), os.Getgid()
	if root {
		uid, gid = nobody, nobody
		a.Credential = &syscall.Credential{Uid: nobody, Gid: nobody}
	}
	if namespaces {
		a.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC
		a.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
		a.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
		// Only root may keep setgroups in the namespace, and needs it to
		// drop its own groups; anyone else keeps theirs.
		a.GidMappingsEnableSetgroups = root
		if root {
			a.Credential.Groups = []uint32{}
		}
	}
	return a, nil
}

// killGroup kills p's process group.
func killGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }

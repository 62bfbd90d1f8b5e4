//go:build unix

package python

import "syscall"

var signalNames = map[syscall.Signal]string{
	syscall.SIGKILL: "SIGKILL", syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ",
	syscall.SIGSEGV: "SIGSEGV", syscall.SIGABRT: "SIGABRT",
}

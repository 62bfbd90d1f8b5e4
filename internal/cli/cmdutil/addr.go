package cmdutil

import (
	"fmt"
	"net"
	"strconv"
)

// CheckListen refuses a listen address (the value of flag) that is not
// host:port with a port from 0 to 65535 (0: any free one) with a usage
// error (exit status 2), as for any bad flag. An empty host listens on
// every interface.
func CheckListen(flag, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		var n uint64
		if n, err = strconv.ParseUint(port, 10, 16); err == nil && port != strconv.FormatUint(n, 10) {
			err = strconv.ErrSyntax
		}
	}
	if err != nil {
		return &UsageError{Err: fmt.Errorf("--%s %q is not an address to listen on: give host:port with a port from 0 to 65535, e.g. 127.0.0.1:7470 (0 picks a free port)", flag, addr)}
	}
	return nil
}

// Listen listens on addr, given by flag; an address taken or refused
// says which flag picks another.
func Listen(flag, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w (pick another address with --%s, e.g. --%s 127.0.0.1:0)", flag, addr, err, flag, flag)
	}
	return ln, nil
}

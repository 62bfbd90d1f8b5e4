// Command cortexctl is the whole of CortexOS in one binary; see internal/cli.
package main

import (
	"context"
	"os"

	"github.com/cortex-os/core/internal/cli"
)

func main() { os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }

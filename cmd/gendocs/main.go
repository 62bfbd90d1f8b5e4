// Command gendocs writes cortexctl's shell completions and man pages from its
// command tree, for `make completions manpages`, the staleness check and the
// release's before hook. It is a build tool and is not shipped.
//
//	go run ./cmd/gendocs -completions completions -man docs/man
//	go run ./cmd/gendocs -man build/man -gzip
//
// The output depends on the command tree only: man pages carry no date, so
// that the same tree always gives the same bytes.
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"github.com/cortex-os/core/internal/cli"
	"github.com/cortex-os/core/internal/cli/cmdutil"
)

// Shells are the shells `cortexctl completion` knows, and the file
// suffixes of their scripts: completions/cortexctl.bash and so on.
var shells = []string{"bash", "zsh", "fish", "powershell"}

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("gendocs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	completions := fs.String("completions", "", "write cortexctl.{bash,zsh,fish,powershell} to this directory")
	man := fs.String("man", "", "write one man page per command (section 1) to this directory")
	gz := fs.Bool("gzip", false, "gzip the man pages (cortexctl.1.gz), as packages install them")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || *completions == "" && *man == "" {
		fmt.Fprintln(stderr, "usage: gendocs [-completions DIR] [-man DIR [-gzip]] (at least one of them)")
		return 2
	}
	if *completions != "" {
		if err := writeCompletions(*completions); err != nil {
			fmt.Fprintln(stderr, "gendocs:", err)
			return 1
		}
	}
	if *man != "" {
		if err := writeManPages(*man, *gz); err != nil {
			fmt.Fprintln(stderr, "gendocs:", err)
			return 1
		}
	}
	return 0
}

// newRoot is cortexctl's command tree, writing to out.
func newRoot(out io.Writer) *cobra.Command {
	return cli.NewRootCmd(&cmdutil.Factory{In: strings.NewReader(""), Out: out, ErrOut: io.Discard})
}

// writeCompletions runs `cortexctl completion SHELL` for every shell, so the
// files are exactly what a user gets from the command.
func writeCompletions(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // holds world-readable files
		return err
	}
	for _, sh := range shells {
		var buf bytes.Buffer
		root := newRoot(&buf)
		root.SetArgs([]string{"completion", sh})
		if err := root.Execute(); err != nil {
			return fmt.Errorf("completion %s: %w", sh, err)
		}
		//nolint:gosec // a script for every user of the package, in the directory the caller named
		if err := os.WriteFile(filepath.Join(dir, "cortexctl."+sh), buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// thDate is the date field of a man page's .TH line, as cobra writes it.
var thDate = regexp.MustCompile(`(?m)^(\.TH "[^"]*" "[^"]*" )"[^"]*"`)

// writeManPages writes the tree's man pages to dir, replacing what man pages
// were there (a removed command loses its page). cobra dates every page with
// the current month; the date is blanked, which man(1) accepts.
func writeManPages(dir string, gz bool) error {
	tmp, err := os.MkdirTemp("", "gendocs-man-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	root := newRoot(io.Discard)
	root.DisableAutoGenTag = true // no "Auto generated ... on DATE" section
	escapeAngles(root, map[*pflag.Flag]bool{})
	epoch := time.Unix(0, 0)
	header := &doc.GenManHeader{Section: "1", Date: &epoch, Source: "CortexOS", Manual: "CortexOS Manual"}
	if err := doc.GenManTree(root, header, tmp); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	pages, err := filepath.Glob(filepath.Join(tmp, "*.1"))
	if err != nil {
		return err
	}
	if len(pages) == 0 {
		return errors.New("man pages: cobra wrote none")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // holds world-readable files
		return err
	}
	old, err := filepath.Glob(filepath.Join(dir, "*.1*"))
	if err != nil {
		return err
	}
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	for _, page := range pages {
		b, err := os.ReadFile(page) //nolint:gosec // a file this function just wrote
		if err != nil {
			return err
		}
		b = thDate.ReplaceAll(b, []byte(`$1""`))
		name := filepath.Join(dir, filepath.Base(page))
		if gz {
			name += ".gz"
			if b, err = gzipBytes(b); err != nil {
				return err
			}
		}
		//nolint:gosec // a page for every user of the package, in the directory the caller named
		if err := os.WriteFile(name, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// escapeAngles keeps placeholders such as <pool> in the help texts of c and
// its subcommands: cobra renders man pages through markdown, where "<pool>"
// is an HTML tag and vanishes. A flag is shared by the commands that inherit
// it, so done marks the ones already escaped.
func escapeAngles(c *cobra.Command, done map[*pflag.Flag]bool) {
	c.Short, c.Long = escapeMarkdown(c.Short), escapeMarkdown(c.Long)
	for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.InheritedFlags()} {
		fs.VisitAll(func(f *pflag.Flag) {
			if !done[f] {
				done[f] = true
				f.Usage = escapeMarkdown(f.Usage)
			}
		})
	}
	for _, sub := range c.Commands() {
		escapeAngles(sub, done)
	}
}

// escapeMarkdown escapes "<" in text lines. Lines indented as markdown
// code (a tab or four spaces, as in cobra's completion help) are shown
// verbatim, escapes and all, so they are left alone.
func escapeMarkdown(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "    ") {
			lines[i] = strings.ReplaceAll(l, "<", `\<`)
		}
	}
	return strings.Join(lines, "\n")
}

// gzipBytes compresses b with no name and no time in the header, so the
// same page always gives the same bytes.
func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

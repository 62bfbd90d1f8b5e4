package contextcmd

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/client"
)

// maxKeyFile bounds what --api-key-file reads.
const maxKeyFile = 64 << 10

// SetOptions are `context set`'s inputs.
type SetOptions struct {
	In     io.Reader
	ErrOut io.Writer
	Name   string
	Server string
	APIKey string
	// APIKeySet is true when --api-key was given, even as "" (which
	// removes the saved key).
	APIKeySet  bool
	APIKeyFile string
	Use        bool
}

// NewCmdSet returns `context set`. runF replaces setRun in tests that
// only check flag parsing.
func NewCmdSet(f *cmdutil.Factory, runF func(*SetOptions) error) *cobra.Command {
	o := &SetOptions{In: f.In, ErrOut: f.ErrOut}
	cmd := &cobra.Command{
		Use:   "set NAME --server URL [--api-key KEY | --api-key-file FILE] [--use]",
		Short: "Add a context or change one",
		Long: `Add the context NAME, or change the one that exists: flags not given keep
their saved values. A new context needs --server. The key is best read from
a file (--api-key-file, "-" for stdin) so that it stays out of your shell
history; --api-key "" removes a saved key. --use makes NAME current.

Names are 1 to 64 letters, digits, '.', '_' or '-'.`,
		Example: `  cortexctl context set prod --server https://cortex.example.com --api-key-file ~/.config/cortex/prod.key --use
  pass show cortex/staging | cortexctl context set staging --server staging:7470 --api-key-file -
  cortexctl context set prod --api-key-file new.key`,
		Args:              nameArgs(1, 1),
		ValidArgsFunction: completeName,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Name = args[0]
			o.APIKeySet = cmd.Flags().Changed("api-key")
			if runF != nil {
				return runF(o)
			}
			return setRun(o)
		},
	}
	// --server and --api-key shadow the root's persistent flags of the
	// same names: here they are what to save, not where to connect.
	fs := cmd.Flags()
	fs.StringVar(&o.Server, "server", "", "the gateway: host:port or an http(s):// URL (required for a new context)")
	fs.StringVar(&o.APIKey, "api-key", "", "the API key to present (prefer --api-key-file)")
	fs.StringVar(&o.APIKeyFile, "api-key-file", "", `read the API key from this file ("-": stdin)`)
	fs.BoolVar(&o.Use, "use", false, "make the context current")
	_ = cmd.MarkFlagFilename("api-key-file")
	return cmd
}

func setRun(o *SetOptions) error {
	if err := client.ValidateContextName(o.Name); err != nil {
		return &cmdutil.UsageError{Err: err}
	}
	if o.APIKeySet && o.APIKeyFile != "" {
		return &cmdutil.UsageError{Err: fmt.Errorf("give the key with --api-key or --api-key-file, not both")}
	}
	cfg, _, err := client.LoadConfig()
	if err != nil {
		return err
	}
	c, exists := cfg.Contexts[o.Name]
	oldServer := c.Server
	switch {
	case o.Server != "":
		s, err := client.NormalizeServer(o.Server)
		if err != nil {
			return &cmdutil.UsageError{Err: fmt.Errorf("--server: %w", err)}
		}
		c.Server = s
	case !exists:
		return &cmdutil.UsageError{Err: fmt.Errorf("context %q is new: give its gateway with --server URL, e.g. --server %s", o.Name, client.DefaultServer)}
	}
	keyGiven := o.APIKeySet || o.APIKeyFile != ""
	switch {
	case o.APIKeyFile != "":
		key, err := readKey(o.APIKeyFile, o.In)
		if err != nil {
			return &cmdutil.UsageError{Err: err}
		}
		c.APIKey = key
	case o.APIKeySet:
		c.APIKey = o.APIKey
	}
	path, err := client.SaveContext(o.Name, c, o.Use)
	if err != nil {
		return err
	}
	verb := "added"
	if exists {
		verb = "updated"
	}
	fmt.Fprintf(o.ErrOut, "%s context %q (%s) in %s\n", verb, o.Name, c.Server, path)
	if exists && c.Server != oldServer && c.APIKey != "" && !keyGiven {
		fmt.Fprintf(o.ErrOut, "note: it keeps the API key saved for %s; give --api-key-file to replace it\n", oldServer)
	}
	switch {
	case o.Use:
		fmt.Fprintf(o.ErrOut, "%q is now the current context\n", o.Name)
	case cfg.Current != o.Name:
		fmt.Fprintf(o.ErrOut, "use it with 'cortexctl context use %s', or for one command with CORTEX_CONTEXT=%s\n", o.Name, o.Name)
	}
	return nil
}

// readKey reads one key from file ("-": in), without surrounding space.
func readKey(file string, in io.Reader) (string, error) {
	r := in
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return "", fmt.Errorf("--api-key-file: %w", err)
		}
		defer f.Close()
		r = f
	} else if r == nil {
		return "", fmt.Errorf("--api-key-file -: no standard input")
	}
	b, err := io.ReadAll(io.LimitReader(r, maxKeyFile+1))
	if err != nil {
		return "", fmt.Errorf("--api-key-file %s: %w", file, err)
	}
	key := string(bytes.TrimSpace(b))
	switch {
	case len(b) > maxKeyFile:
		return "", fmt.Errorf("--api-key-file %s: more than %d KiB; want a file holding only the key", file, maxKeyFile>>10)
	case key == "":
		return "", fmt.Errorf("--api-key-file %s is empty; want a file holding only the key", file)
	case bytes.ContainsAny([]byte(key), " \t\r\n"):
		return "", fmt.Errorf("--api-key-file %s holds more than one word; want a file holding only the key", file)
	}
	return key, nil
}

// Package contextcmd is `cortexctl context`: it lists, shows, selects,
// adds and deletes the named contexts of the contexts file (see
// client.Config), so that other commands find their gateway and key with
// no flags. It reads and writes that file only and never calls a gateway.
package contextcmd

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/internal/telemetry"
)

// NewCmdContext returns the `context` command group.
func NewCmdContext(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "context",
		Aliases: []string{"ctx"},
		Short:   "Manage the named contexts that say which gateway to use",
		Long: `A context names a gateway and the API key to present to it. Commands use the
current context unless --server / --api-key, CORTEX_SERVER / CORTEX_API_KEY
say otherwise; CORTEX_CONTEXT=NAME picks another context for one shell.

'cortexctl up' saves its stack as the context "local" and makes it current.
Contexts live in $CORTEX_CONTEXT_FILE, else $XDG_CONFIG_HOME/cortex/contexts.json
(~/.config/cortex/contexts.json), mode 0600: it holds API keys.`,
		Example: `  cortexctl context list
  cortexctl context set prod --server https://cortex.example.com --api-key-file ~/.prod-key --use
  cortexctl context use local
  CORTEX_CONTEXT=prod cortexctl submit --topic job.echo --prompt hi`,
	}
	cmd.AddCommand(
		NewCmdList(f, nil),
		NewCmdShow(f, nil),
		NewCmdUse(f, nil),
		NewCmdSet(f, nil),
		NewCmdDelete(f, nil),
	)
	return cmd
}

// contextView is how a context prints in json and yaml, with the names
// Connect's JSON uses (lowerCamel).
type contextView struct {
	Name     string `json:"name"`
	Current  bool   `json:"current"`
	Server   string `json:"server"`
	APIKey   string `json:"apiKey,omitempty"`
	NATSURL  string `json:"natsUrl,omitempty"`
	RedisURL string `json:"redisUrl,omitempty"`
}

// view returns c for printing. Unless reveal, the key is masked and the
// passwords in the NATS and Redis URLs are hidden.
func view(name string, c client.Context, current, reveal bool) contextView {
	v := contextView{Name: name, Current: current, Server: c.Server, APIKey: c.APIKey, NATSURL: c.NATSURL, RedisURL: c.RedisURL}
	if !reveal {
		v.APIKey = output.MaskKey(c.APIKey)
		v.NATSURL = redact(c.NATSURL)
		v.RedisURL = redact(c.RedisURL)
	}
	return v
}

func redact(u string) string {
	if u == "" {
		return ""
	}
	return telemetry.RedactURL(u)
}

// nameArgs accepts between least and most NAME arguments and says what
// to do otherwise.
func nameArgs(least, most int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < least:
			return &cmdutil.UsageError{Err: fmt.Errorf("%s needs a context NAME; list them with 'cortexctl context list'", cmd.CommandPath())}
		case len(args) > most:
			return &cmdutil.UsageError{Err: fmt.Errorf("%s takes at most %d context NAME, got %d arguments: %s", cmd.CommandPath(), most, len(args), strings.Join(args, " "))}
		}
		return nil
	}
}

// completeName offers the contexts' names, each with its server, for the
// first argument.
func completeName(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cfg, _, err := client.LoadConfig()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var names []string
	for _, n := range cfg.Names() {
		if strings.HasPrefix(n, toComplete) {
			names = append(names, n+"\t"+cfg.Contexts[n].Server)
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// overridden names the context that CORTEX_CONTEXT selects instead of the
// current one, or "".
func overridden(cfg *client.Config) string {
	if n := os.Getenv("CORTEX_CONTEXT"); n != "" && n != cfg.Current {
		return n
	}
	return ""
}

// errNoContexts says how to create the first context.
func errNoContexts(path string) error {
	return fmt.Errorf("no contexts in %s; run 'cortexctl up' for a local stack, or 'cortexctl context set NAME --server URL'", path)
}

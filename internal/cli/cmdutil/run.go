package cmdutil

import (
	"fmt"
	"log/slog"
	"slices"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/config"
	"github.com/cortex-os/core/internal/telemetry"
)

// BindConfig adds --config FILE to cmd and, before it runs, fills the
// flags not given on the command line from CORTEX_<FLAG>, then from the
// file (also CORTEX_CONFIG): defaults < file < environment < flags. A key of
// the file that another command taking --config knows is skipped, so the
// daemons can share one file; any other unknown key is an error.
func BindConfig(cmd *cobra.Command) {
	var file string
	cmd.Flags().StringVar(&file, "config", "", "YAML file of settings keyed by long flag name (nats-url: ..., api-keys: [...]), also CORTEX_CONFIG; CORTEX_<FLAG> variables and flags win over it")
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if err := config.ApplyEnv(c.Flags(), nil); err != nil {
			return &UsageError{Err: err}
		}
		if file != "" {
			if err := config.ApplyFile(c.Flags(), file, configuredElsewhere(c)); err != nil {
				return &UsageError{Err: err}
			}
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
}

// configuredElsewhere says whether a command other than c that takes
// --config has a flag of that name.
func configuredElsewhere(c *cobra.Command) func(string) bool {
	return func(name string) bool {
		var has func(*cobra.Command) bool
		has = func(x *cobra.Command) bool {
			if x != c && x.Flags().Lookup("config") != nil && x.Flags().Lookup(name) != nil {
				return true
			}
			return slices.ContainsFunc(x.Commands(), has)
		}
		return has(c.Root())
	}
}

// Logger builds the daemon logger on the command's stderr.
func Logger(cmd *cobra.Command, level string) (*slog.Logger, error) {
	log, err := telemetry.NewLogger(cmd.ErrOrStderr(), level)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("--log-level: %w", err)}
	}
	return log, nil
}

package cmdutil

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/config"
	"github.com/cortex-os/core/internal/telemetry"
)

// BindEnv makes every flag of cmd settable from CORTEX_<FLAG> before the
// command runs; flags given on the command line win.
func BindEnv(cmd *cobra.Command) {
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if err := config.ApplyEnv(c.Flags(), nil); err != nil {
			return &UsageError{Err: err}
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
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

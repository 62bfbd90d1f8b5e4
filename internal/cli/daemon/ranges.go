package daemon

// Ranges: the durations and counts of the daemons and up are checked
// before anything starts, wherever their values came from. A value out of
// range is a usage error (exit 2) naming the flag, the range and, when it
// was not the command line, the CORTEX_* variable or the config file that
// gave it; none is quietly replaced by a default.

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/config"
)

// FlagRange is the range of values one flag of a command takes.
type FlagRange struct {
	// Name is the flag's long name.
	Name string
	// Want says the range, as the error puts it after "want": "1 or
	// more", "more than 0s".
	Want string
	// Note, when set, says why, in parentheses after the range.
	Note string
	// In says whether the flag's value is in range.
	In func() bool
}

// AtLeast is the range of an int flag from lowest up.
func AtLeast(name string, v *int, lowest int, note string) FlagRange {
	return FlagRange{Name: name, Want: fmt.Sprintf("%d or more", lowest), Note: note, In: func() bool { return *v >= lowest }}
}

// Between is the range of an int flag from lowest to highest.
func Between(name string, v *int, lowest, highest int, note string) FlagRange {
	return FlagRange{Name: name, Want: fmt.Sprintf("%d to %d", lowest, highest), Note: note, In: func() bool { return *v >= lowest && *v <= highest }}
}

// Positive is the range of a duration flag above zero.
func Positive(name string, d *time.Duration, note string) FlagRange {
	return FlagRange{Name: name, Want: "more than 0s", Note: note, In: func() bool { return *d > 0 }}
}

// AtLeastDuration is the range of a duration flag from lowest up.
func AtLeastDuration(name string, d *time.Duration, lowest time.Duration, note string) FlagRange {
	return FlagRange{Name: name, Want: lowest.String() + " or more", Note: note, In: func() bool { return *d >= lowest }}
}

// MinLease is the shortest --lease: a running job's worker renews its
// lease every third of it, and the store keeps it in milliseconds.
const MinLease = time.Second

// LeaseRange is the range of --lease.
func LeaseRange(lease *time.Duration) FlagRange {
	return AtLeastDuration("lease", lease, MinLease, "a running job's worker renews its lease every third of it")
}

// SafetyTimeoutRange is the range of --safety-timeout.
func SafetyTimeoutRange(d *time.Duration) FlagRange {
	return Positive("safety-timeout", d, "a check not answered in time denies the job")
}

// maxStreamReplicas is JetStream's limit on a stream's replicas.
const maxStreamReplicas = 5

// StreamReplicasRange is the range of --stream-replicas.
func StreamReplicasRange(replicas *int) FlagRange {
	return Between("stream-replicas", replicas, 1, maxStreamReplicas, "JetStream's limit; 3 on a NATS cluster of 3")
}

// CheckRanges makes cmd refuse, before it runs, a value of any flag of
// ranges that is out of its range: a usage error that names the flag, the
// value, the range and where the value came from when it was not the
// command line. Call it after cmdutil.BindConfig, whose CORTEX_* variables
// and config file it checks too.
func CheckRanges(cmd *cobra.Command, ranges ...FlagRange) {
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		// Before the environment and the config file fill the flags not
		// given, Changed means given on the command line.
		given := map[string]bool{}
		for _, r := range ranges {
			if f := c.Flags().Lookup(r.Name); f != nil && f.Changed {
				given[r.Name] = true
			}
		}
		if prev != nil {
			if err := prev(c, args); err != nil {
				return err
			}
		}
		for _, r := range ranges {
			if r.In() {
				continue
			}
			f := c.Flags().Lookup(r.Name)
			msg := fmt.Sprintf("--%s %s%s: want %s", r.Name, f.Value.String(), origin(c, r.Name, given[r.Name]), r.Want)
			if r.Note != "" {
				msg += " (" + r.Note + ")"
			}
			return &cmdutil.UsageError{Err: errors.New(msg)}
		}
		return nil
	}
}

// origin says where the value of flag name came from when it was not the
// command line (given): " (from CORTEX_NAME)", " (from config file F)", or
// "" for the command line and the default.
func origin(c *cobra.Command, name string, given bool) string {
	if given {
		return ""
	}
	if _, ok := os.LookupEnv(config.EnvName(name)); ok {
		return " (from " + config.EnvName(name) + ")"
	}
	if f := c.Flags().Lookup(name); f != nil && f.Changed {
		if file := c.Flags().Lookup("config"); file != nil && file.Value.String() != "" {
			return " (from config file " + file.Value.String() + ")"
		}
	}
	return ""
}

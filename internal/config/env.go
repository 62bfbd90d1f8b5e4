// Package config resolves settings in one order for every command: defaults
// < config file < environment (CORTEX_*) < flags. It validates as it goes
// and owns no setting itself: commands declare their flags, this package
// fills the ones left unset from the environment (ApplyEnv) and then from a
// YAML file keyed by flag name (ApplyFile). It reads secrets and TLS files
// for the connections without ever putting a secret in an error, and helps
// other YAML loaders report errors at file:line. It must not log, dial or
// keep state.
package config

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// EnvName is the environment variable that sets a flag: CORTEX_ followed by
// the flag's name in upper case with dashes as underscores (--nats-url is
// CORTEX_NATS_URL).
func EnvName(flag string) string {
	return "CORTEX_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// ApplyEnv sets every flag not given on the command line from its
// environment variable, if that is set. A bad value is an error naming the
// variable.
func ApplyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := EnvName(f.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		// The value is not repeated: it may be a secret (CORTEX_API_KEYS).
		if fs.Set(f.Name, v) != nil {
			err = fmt.Errorf("environment %s: not a valid %s for --%s", name, f.Value.Type(), f.Name)
		}
	})
	return err
}

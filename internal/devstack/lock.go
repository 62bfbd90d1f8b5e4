package devstack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cortex-os/core/internal/config"
)

// lockName is the file in a data directory that one running stack holds
// locked, so that a second stack refuses the directory instead of sharing
// JetStream's store with the first.
const lockName = "cortex-up.lock"

// errLocked is lockFile's error for a file another process holds.
var errLocked = errors.New("locked")

// claimDataDir makes dir if need be and locks it for this process, or says
// why it cannot: not a directory, not writable, or in use by another stack
// (naming its process).
func claimDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir %s: %w", dir, config.WithoutPath(err))
	}
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--data-dir %s: %w", dir, config.WithoutPath(err))
	}
	if err := lockFile(f); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid := strings.TrimSpace(string(b)); pid != "" {
				holder = " (process " + pid + ")"
			}
		}
		_ = f.Close()
		if errors.Is(err, errLocked) {
			return nil, fmt.Errorf("--data-dir %s is in use by another cortexctl up%s: stop it, or give this one another directory", dir, holder)
		}
		return nil, fmt.Errorf("--data-dir %s: lock %s: %w", dir, lockName, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

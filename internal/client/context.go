package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Context is what `cortexctl up` writes so that commands in another
// terminal find the stack with no flags. It holds secrets: the file is
// written with mode 0600.
type Context struct {
	Server   string `json:"server"`
	APIKey   string `json:"api_key,omitempty"`
	NATSURL  string `json:"nats_url,omitempty"`
	RedisURL string `json:"redis_url,omitempty"`
}

// ContextPath is $CORTEX_CONTEXT_FILE if set, else
// $XDG_CONFIG_HOME/cortex/context.json (~/.config/cortex/context.json).
func ContextPath() (string, error) {
	if p := os.Getenv("CORTEX_CONTEXT_FILE"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory: %w", err)
	}
	return filepath.Join(dir, "cortex", "context.json"), nil
}

// LoadContext reads the context file; a missing file is an empty context.
func LoadContext() (Context, error) {
	var c Context
	p, err := ContextPath()
	if err != nil {
		return c, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("read context %s: %w", p, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("read context %s: %w (delete the file, or run 'cortexctl up' to write it again)", p, err)
	}
	return c, nil
}

// SaveContext writes the context file atomically with mode 0600 and
// returns its path.
func SaveContext(c Context) (string, error) {
	p, err := ContextPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", fmt.Errorf("write context: %w", err)
	}
	b, err := json.MarshalIndent(c, "", "  ") //nolint:gosec // the key is meant to be saved; the file is 0600
	if err != nil {
		return "", fmt.Errorf("write context: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".context-*.json")
	if err != nil {
		return "", fmt.Errorf("write context: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write context %s: %w", p, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("write context %s: %w", p, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return "", fmt.Errorf("write context %s: %w", p, err)
	}
	return p, nil
}

// Target is where a command sends its calls.
type Target struct {
	Server string
	APIKey string
}

// Resolve picks the gateway and key: the flag, then CORTEX_SERVER /
// CORTEX_API_KEY, then the context file, then DefaultServer.
func Resolve(flagServer, flagKey string) (Target, error) {
	t := Target{Server: flagServer, APIKey: flagKey}
	if t.Server == "" {
		t.Server = os.Getenv("CORTEX_SERVER")
	}
	if t.APIKey == "" {
		t.APIKey = os.Getenv("CORTEX_API_KEY")
	}
	if t.Server == "" || t.APIKey == "" {
		c, err := LoadContext()
		if err != nil {
			return t, err
		}
		if t.Server == "" {
			t.Server = c.Server
			// A key saved for another server is not offered to this one.
			if t.APIKey == "" {
				t.APIKey = c.APIKey
			}
		} else if t.APIKey == "" && sameServer(t.Server, c.Server) {
			t.APIKey = c.APIKey
		}
	}
	if t.Server == "" {
		t.Server = DefaultServer
	}
	return t, nil
}

func sameServer(a, b string) bool {
	na, errA := NormalizeServer(a)
	nb, errB := NormalizeServer(b)
	return errA == nil && errB == nil && na == nb
}

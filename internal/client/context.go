package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Context is one named place a command can send its calls: a gateway and
// the key to present to it, and for a stack started by `cortexctl up` the
// NATS and Redis it runs on. It holds secrets: the file is mode 0600.
type Context struct {
	Server   string `json:"server"`
	APIKey   string `json:"api_key,omitempty"`
	NATSURL  string `json:"nats_url,omitempty"`
	RedisURL string `json:"redis_url,omitempty"`
}

// Config is the contexts file: every named context and the current one.
type Config struct {
	// Current names the context used when neither flags, CORTEX_SERVER nor
	// CORTEX_CONTEXT say otherwise; empty means none.
	Current  string             `json:"current,omitempty"`
	Contexts map[string]Context `json:"contexts"`

	path string // where ReadConfig found it, for errors
}

// LocalContext is the name `cortexctl up` saves its stack's context under.
const LocalContext = "local"

// ContextPath is $CORTEX_CONTEXT_FILE if set, else
// $XDG_CONFIG_HOME/cortex/contexts.json (~/.config/cortex/contexts.json).
func ContextPath() (string, error) {
	if p := os.Getenv("CORTEX_CONTEXT_FILE"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory (set CORTEX_CONTEXT_FILE or XDG_CONFIG_HOME): %w", err)
	}
	return filepath.Join(dir, "cortex", "contexts.json"), nil
}

var contextName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,64}$`)

// ValidateContextName accepts 1 to 64 letters, digits, '.', '_' and '-'.
func ValidateContextName(name string) error {
	if !contextName.MatchString(name) {
		return fmt.Errorf("context name %q: use 1 to 64 letters, digits, '.', '_' or '-', e.g. prod-eu", name)
	}
	return nil
}

// UnknownContextError is a context name that the file does not hold.
type UnknownContextError struct {
	Name  string
	Path  string
	Known []string // sorted
}

func (e *UnknownContextError) Error() string {
	if len(e.Known) == 0 {
		return fmt.Sprintf("no context named %q: %s holds no contexts; run 'cortexctl up' or 'cortexctl context set NAME --server URL'", e.Name, e.Path)
	}
	return fmt.Sprintf("no context named %q in %s; known contexts: %s (see 'cortexctl context list')", e.Name, e.Path, strings.Join(e.Known, ", "))
}

// Names returns the contexts' names, sorted.
func (c *Config) Names() []string {
	names := make([]string, 0, len(c.Contexts))
	for n := range c.Contexts {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Lookup returns the context called name, or an *UnknownContextError that
// lists the known ones.
func (c *Config) Lookup(name string) (Context, error) {
	ctx, ok := c.Contexts[name]
	if !ok {
		return Context{}, &UnknownContextError{Name: name, Path: c.path, Known: c.Names()}
	}
	return ctx, nil
}

// ReadConfig reads the contexts file at path; a missing file is an empty
// Config. A file in the single-context format of earlier versions reads as
// one context named "local", made current.
func ReadConfig(path string) (*Config, error) {
	cfg := &Config{Contexts: map[string]Context{}, path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read contexts %s: %w", path, err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return cfg, nil
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, malformed(path, err)
	}
	if _, ok := probe["contexts"]; !ok {
		if _, legacy := probe["server"]; legacy {
			var c Context
			if err := json.Unmarshal(b, &c); err != nil {
				return nil, malformed(path, err)
			}
			cfg.Contexts[LocalContext] = c
			cfg.Current = LocalContext
			return cfg, nil
		}
	}
	if err := json.Unmarshal(b, cfg); err != nil {
		return nil, malformed(path, err)
	}
	if cfg.Contexts == nil {
		cfg.Contexts = map[string]Context{}
	}
	for name := range cfg.Contexts {
		if err := ValidateContextName(name); err != nil {
			return nil, malformed(path, err)
		}
	}
	return cfg, nil
}

func malformed(path string, err error) error {
	return fmt.Errorf("read contexts %s: %w (fix or delete the file, then run 'cortexctl up' or 'cortexctl context set NAME --server URL' to write it again)", path, err)
}

// LoadConfig reads the contexts file at ContextPath and returns it with
// its path.
func LoadConfig() (*Config, string, error) {
	p, err := ContextPath()
	if err != nil {
		return nil, "", err
	}
	cfg, err := ReadConfig(p)
	return cfg, p, err
}

// update reads the contexts file, applies fn and writes the result back.
// Two processes updating at once may lose one update, as with kubeconfig.
func update(fn func(cfg *Config) error) (string, error) {
	cfg, p, err := LoadConfig()
	if err != nil {
		return p, err
	}
	if err := fn(cfg); err != nil {
		return p, err
	}
	return p, writeConfig(p, cfg)
}

// SaveContext adds or replaces the context called name, makes it current
// if makeCurrent, and returns the file's path.
func SaveContext(name string, c Context, makeCurrent bool) (string, error) {
	if err := ValidateContextName(name); err != nil {
		return "", err
	}
	if c.Server == "" {
		return "", fmt.Errorf("save context %q: it has no server; give one, e.g. %s", name, DefaultServer)
	}
	return update(func(cfg *Config) error {
		cfg.Contexts[name] = c
		if makeCurrent {
			cfg.Current = name
		}
		return nil
	})
}

// UseContext makes the context called name current.
func UseContext(name string) error {
	_, err := update(func(cfg *Config) error {
		if _, err := cfg.Lookup(name); err != nil {
			return err
		}
		cfg.Current = name
		return nil
	})
	return err
}

// DeleteContext removes the context called name; if it was current, no
// context is current afterwards.
func DeleteContext(name string) error {
	_, err := update(func(cfg *Config) error {
		if _, err := cfg.Lookup(name); err != nil {
			return err
		}
		delete(cfg.Contexts, name)
		if cfg.Current == name {
			cfg.Current = ""
		}
		return nil
	})
	return err
}

// writeConfig writes cfg to p atomically (a temporary file renamed over
// it) with mode 0600, creating the directory with mode 0700. A symbolic
// link at p is followed, so a linked file stays linked.
func writeConfig(p string, cfg *Config) error {
	if real, err := filepath.EvalSymlinks(p); err == nil {
		p = real
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("write contexts: %w", err)
	}
	b, err := json.MarshalIndent(cfg, "", "  ") //nolint:gosec // the keys are meant to be saved; the file is 0600
	if err != nil {
		return fmt.Errorf("write contexts: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".contexts-*.json")
	if err != nil {
		return fmt.Errorf("write contexts: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write contexts %s: %w", p, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write contexts %s: %w", p, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write contexts %s: %w", p, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("write contexts %s: %w", p, err)
	}
	return nil
}

// Target is where a command sends its calls.
type Target struct {
	Server string
	APIKey string
	// KeyFromContext says the key is the selected context's (no flag or
	// environment gave one): FollowContextKey follows it.
	KeyFromContext bool
}

// Resolve picks the gateway and key: the flag, then CORTEX_SERVER /
// CORTEX_API_KEY, then the context named by CORTEX_CONTEXT or else the
// current context, then DefaultServer. A context's key is offered only to
// that context's server.
func Resolve(flagServer, flagKey string) (Target, error) {
	t := Target{Server: flagServer, APIKey: flagKey}
	if t.Server == "" {
		t.Server = os.Getenv("CORTEX_SERVER")
	}
	if t.APIKey == "" {
		t.APIKey = os.Getenv("CORTEX_API_KEY")
	}
	if t.Server == "" || t.APIKey == "" {
		c, ok, err := selectedContext()
		if err != nil {
			return t, err
		}
		if ok {
			if t.Server == "" {
				t.Server = c.Server
				if t.APIKey == "" {
					t.APIKey, t.KeyFromContext = c.APIKey, true
				}
			} else if t.APIKey == "" && sameServer(t.Server, c.Server) {
				t.APIKey, t.KeyFromContext = c.APIKey, true
			}
		}
	}
	if t.Server == "" {
		t.Server = DefaultServer
	}
	return t, nil
}

// contextRecheck is how often FollowContextKey looks at the contexts file.
var contextRecheck = time.Second

// FollowContextKey returns t's key as the selected context holds it now:
// read again when the contexts file changed (looked at once a second at
// most), so that a command that
// runs long (top, tail) goes on with the new key that a restarted up
// wrote, rather than be refused the old one. The key stays the one it has
// while the file cannot be read, or names no key for t's server.
func FollowContextKey(t Target) func() string {
	var (
		mu      sync.Mutex
		key     = t.APIKey
		changed time.Time // the file's modification time when last read
		looked  time.Time // when the file was last looked at
	)
	if p, err := ContextPath(); err == nil {
		if fi, err := os.Stat(p); err == nil {
			changed = fi.ModTime()
		}
	}
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		// Not at every call: a bench calls many times a second.
		now := time.Now()
		if now.Sub(looked) < contextRecheck {
			return key
		}
		looked = now
		p, err := ContextPath()
		if err != nil {
			return key
		}
		fi, err := os.Stat(p)
		if err != nil || fi.ModTime().Equal(changed) {
			return key
		}
		changed = fi.ModTime()
		if c, ok, err := selectedContext(); err == nil && ok && c.APIKey != "" && sameServer(t.Server, c.Server) {
			key = c.APIKey
		}
		return key
	}
}

// selectedContext is the context named by CORTEX_CONTEXT, else the
// current one; ok is false when neither names one.
func selectedContext() (Context, bool, error) {
	cfg, _, err := LoadConfig()
	if err != nil {
		return Context{}, false, err
	}
	name, from := os.Getenv("CORTEX_CONTEXT"), "CORTEX_CONTEXT"
	if name == "" {
		name, from = cfg.Current, "current context"
	}
	if name == "" {
		return Context{}, false, nil
	}
	c, err := cfg.Lookup(name)
	if err != nil {
		return Context{}, false, fmt.Errorf("%s: %w", from, err)
	}
	return c, true, nil
}

func sameServer(a, b string) bool {
	na, errA := NormalizeServer(a)
	nb, errB := NormalizeServer(b)
	return errA == nil && errB == nil && na == nb
}

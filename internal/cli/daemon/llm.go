package daemon

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/plugins/llm"
)

// PoolLLM is the pool whose jobs run on an OpenAI-compatible model.
const PoolLLM = "chat-llm"

// LLMKeyEnv holds the chat-llm pool's API key (a flag would show it in
// the process list).
const LLMKeyEnv = "CORTEX_LLM_API_KEY"

// LLMFlags are --llm-base-url, --llm-model and --llm-api-key-file, which
// configure the chat-llm pool of `worker` and `up`.
type LLMFlags struct {
	BaseURL string
	Model   string
	KeyFile string
}

// AddLLMFlags adds the chat-llm pool's flags to cmd.
func AddLLMFlags(cmd *cobra.Command, f *LLMFlags) {
	fs := cmd.Flags()
	fs.StringVar(&f.BaseURL, "llm-base-url", "", "chat-llm pool: the OpenAI-compatible API root, e.g. http://127.0.0.1:11434/v1 (Ollama)")
	fs.StringVar(&f.Model, "llm-model", "", "chat-llm pool: the model every chat job runs on (default: the model a chat request names)")
	fs.StringVar(&f.KeyFile, "llm-api-key-file", "", "chat-llm pool: file holding the upstream's API key (default: $"+LLMKeyEnv+", else no key)")
}

// Set reports whether any of the flags was given.
func (f *LLMFlags) Set() bool { return f.BaseURL != "" || f.Model != "" || f.KeyFile != "" }

// maxKeyFile bounds a key file.
const maxKeyFile = 16 << 10

// Handler checks the flags, reads the key (from --llm-api-key-file, else
// $CORTEX_LLM_API_KEY) and returns the chat-llm handler with its config.
// The key's text never appears in an error.
func (f *LLMFlags) Handler() (*llm.Handler, llm.Config, error) {
	if f.BaseURL == "" {
		return nil, llm.Config{}, &cmdutil.UsageError{Err: errors.New(
			"pool chat-llm needs --llm-base-url: the root of an OpenAI-compatible API, e.g. http://127.0.0.1:11434/v1 for Ollama")}
	}
	cfg := llm.Config{BaseURL: f.BaseURL, Model: f.Model, APIKey: os.Getenv(LLMKeyEnv)}
	if f.KeyFile != "" {
		key, err := readKeyFile(f.KeyFile)
		if err != nil {
			return nil, llm.Config{}, &cmdutil.UsageError{Err: fmt.Errorf("--llm-api-key-file: %w", err)}
		}
		cfg.APIKey = key
	}
	h, err := llm.New(cfg)
	if err != nil {
		return nil, llm.Config{}, &cmdutil.UsageError{Err: fmt.Errorf("--llm-base-url: %w", err)}
	}
	return h, cfg, nil
}

// readKeyFile reads a secret: the file's first line, trimmed.
func readKeyFile(path string) (string, error) {
	fh, err := os.Open(path) //nolint:gosec // the operator names the file
	if err != nil {
		return "", err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxKeyFile+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxKeyFile {
		return "", fmt.Errorf("%s is over %d KiB: give a file that holds only the key", path, maxKeyFile>>10)
	}
	key, _, _ := strings.Cut(string(b), "\n")
	if key = strings.TrimSpace(key); key == "" {
		return "", fmt.Errorf("%s is empty: write the key on its first line", path)
	}
	return key, nil
}

// Capabilities are what a chat-llm worker says in its heartbeats: its
// pool's kind and, with --llm-model, the model as model:<name>, which the
// gateway's GET /v1/models lists. None without a model: the worker
// reports its topics' kinds.
func (f *LLMFlags) Capabilities() []string {
	if f.Model == "" {
		return nil
	}
	return []string{"chat.llm", gateway.ModelCapability + f.Model}
}

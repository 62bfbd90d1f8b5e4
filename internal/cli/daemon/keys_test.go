package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAPIKeysFromFlagAndFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte("# keys\n\nfile-key-0001:acme\r\n  file-key-0002:beta:read  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := apiKeys([]string{"flag-key-0001:gamma:admin"}, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || keys["file-key-0001"].Tenant != "acme" || !keys["file-key-0002"].ReadOnly || !keys["flag-key-0001"].Admin {
		t.Errorf("keys = %+v, want the flag's and the file's", keys)
	}
	_, err = apiKeys([]string{"file-key-0001:gamma"}, path)
	if err == nil || !strings.HasPrefix(err.Error(), "--api-keys and --api-keys-file: the same key is given twice") {
		t.Errorf("a key in both: %v", err)
	}
	if strings.Contains(err.Error(), "file-key") {
		t.Errorf("error %q shows a key", err)
	}
}

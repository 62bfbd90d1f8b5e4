package safety

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Files are the policy files a kernel enforces and shadows ("" for none).
type Files struct {
	Policy string
	Shadow string
}

// LoadFiles puts the files that are set in force. The first error stops
// it; the kernel keeps what it had for that policy.
func (k *Kernel) LoadFiles(f Files) error {
	if f.Policy != "" {
		if err := k.LoadFile(f.Policy, false); err != nil {
			return err
		}
	}
	if f.Shadow != "" {
		if err := k.LoadFile(f.Shadow, true); err != nil {
			return err
		}
	}
	return nil
}

// settle is how long Watch waits after a change before it reloads, so an
// editor's write-rename-chmod becomes one reload.
const settle = 200 * time.Millisecond

// Watch reloads the files when they change on disk and whenever reload
// receives (SIGHUP), until ctx ends. A file that does not compile is
// logged, kept for Status, and changes nothing. It watches the files'
// directories, so editors that replace a file and Kubernetes ConfigMaps
// (which swap a symlink) are both seen.
func (k *Kernel) Watch(ctx context.Context, f Files, reload <-chan os.Signal) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policy files: %w", err)
	}
	defer func() { _ = w.Close() }()
	for _, path := range []string{f.Policy, f.Shadow} {
		if path == "" {
			continue
		}
		if err := w.Add(filepath.Dir(path)); err != nil {
			return fmt.Errorf("watch policy file %s: %w", path, err)
		}
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-reload:
			if !ok {
				reload = nil
				continue
			}
			k.log.Info("reloading policy files (signal)")
			k.reloadChanged(f, true)
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op != fsnotify.Chmod {
				timer.Reset(settle)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			k.log.Warn("watching policy files", "err", err)
		case <-timer.C:
			k.reloadChanged(f, false)
		}
	}
}

// reloadChanged loads each file whose text differs from what is in force
// (every file when force is set). A missing file is reported and changes
// nothing.
func (k *Kernel) reloadChanged(f Files, force bool) {
	for _, c := range []struct {
		path   string
		shadow bool
	}{{f.Policy, false}, {f.Shadow, true}} {
		if c.path == "" {
			continue
		}
		data, err := os.ReadFile(c.path)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) || force {
				k.refused(fmt.Errorf("read policy %s: %w", c.path, err))
			}
			continue
		}
		k.mu.Lock()
		unchanged := k.fileText[c.path] == string(data)
		k.mu.Unlock()
		if !force && unchanged {
			continue
		}
		_ = k.LoadFile(c.path, c.shadow)
	}
}

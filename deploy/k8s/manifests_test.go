// Package k8s_test checks the kustomize manifests of deploy/k8s against the
// code they run: the routing file loads, every worker pool of it has a
// Deployment (and every worker Deployment a pool), and every flag a
// Deployment passes, as an argument or as a CORTEX_* variable, is a flag of
// the command it runs. Schemas are checked by `make k8s-validate`
// (kustomize build | kubectl-validate), which runs this test too.
package k8s_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/config"
	"github.com/cortex-os/core/internal/routing"
)

// daemons are the commands a Deployment may run, by their first argument.
func daemons() map[string]*cobra.Command {
	return map[string]*cobra.Command{
		"gateway":   daemon.NewCmdGateway(),
		"scheduler": daemon.NewCmdScheduler(),
		"safety":    daemon.NewCmdSafety(),
		"worker":    daemon.NewCmdWorker(),
	}
}

// container is the part of a Deployment's cortexctl container this test
// reads.
type container struct {
	Name string   `yaml:"name"`
	Args []string `yaml:"args"`
	Env  []struct {
		Name string `yaml:"name"`
	} `yaml:"env"`
}

type manifest struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		Template struct {
			Spec struct {
				Containers []container `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// deployments reads every Deployment document (resources and patches) of
// the YAML files under deploy/k8s.
func deployments(t *testing.T) map[string][]manifest {
	t.Helper()
	out := map[string][]manifest{}
	fsys := os.DirFS(".")
	err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".yaml" {
			return err
		}
		data, err := fs.ReadFile(fsys, path)
		if err != nil {
			return err
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var m manifest
			err := dec.Decode(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if m.Kind == "Deployment" {
				out[path] = append(out[path], m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// envKeys are the CORTEX_* names of the overlays' and the base's env files.
func envKeys(t *testing.T) map[string][]string {
	t.Helper()
	fsys := os.DirFS(".")
	files, err := fs.Glob(fsys, "*/*.env")
	if err != nil {
		t.Fatal(err)
	}
	more, err := fs.Glob(fsys, "*/*/*.env")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, f := range append(files, more...) {
		data, err := fs.ReadFile(fsys, f)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(data)) {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			key, _, ok := strings.Cut(line, "=")
			if !ok {
				t.Errorf("%s: %q is not KEY=VALUE", f, line)
				continue
			}
			out[f] = append(out[f], key)
		}
	}
	if len(out) == 0 {
		t.Fatal("no .env files found under deploy/k8s")
	}
	return out
}

// flagOf is the flag a CORTEX_* variable sets (config.EnvName backwards).
func flagOf(env string) (string, bool) {
	rest, ok := strings.CutPrefix(env, "CORTEX_")
	if !ok {
		return "", false
	}
	flag := strings.ReplaceAll(strings.ToLower(rest), "_", "-")
	return flag, config.EnvName(flag) == env
}

// checkFlag reports a flag that none of cmds has.
func checkFlag(t *testing.T, where, flag string, cmds ...*cobra.Command) {
	t.Helper()
	if !slices.ContainsFunc(cmds, func(c *cobra.Command) bool { return c.Flags().Lookup(flag) != nil }) {
		names := make([]string, len(cmds))
		for i, c := range cmds {
			names[i] = c.Name()
		}
		t.Errorf("%s: --%s is not a flag of cortexctl %s", where, flag, strings.Join(names, " or "))
	}
}

func TestFlagsAreFlagsOfTheirCommand(t *testing.T) {
	cmds := daemons()
	all := slices.SortedFunc(maps.Values(cmds), func(a, b *cobra.Command) int { return strings.Compare(a.Name(), b.Name()) })
	checked := 0
	for path, ms := range deployments(t) {
		for _, m := range ms {
			for _, c := range m.Spec.Template.Spec.Containers {
				if c.Name != "cortexctl" {
					continue
				}
				where := path + ": " + m.Metadata.Name
				// A patch has no args: its env may go to any daemon.
				targets := all
				if len(c.Args) > 0 {
					cmd, ok := cmds[c.Args[0]]
					if !ok {
						t.Errorf("%s: runs %q, not a daemon (gateway, scheduler, safety, worker)", where, c.Args[0])
						continue
					}
					targets = []*cobra.Command{cmd}
				}
				for _, a := range c.Args[min(1, len(c.Args)):] {
					name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
					if !strings.HasPrefix(a, "--") {
						t.Errorf("%s: argument %q: write flags as --name=value", where, a)
						continue
					}
					checkFlag(t, where, name, targets...)
					checked++
				}
				for _, e := range c.Env {
					flag, ok := flagOf(e.Name)
					if !ok {
						t.Errorf("%s: env %s does not set a flag (CORTEX_<FLAG>)", where, e.Name)
						continue
					}
					checkFlag(t, where, flag, targets...)
					checked++
				}
			}
		}
	}
	for file, keys := range envKeys(t) {
		for _, k := range keys {
			flag, ok := flagOf(k)
			if !ok {
				t.Errorf("%s: %s does not set a flag (CORTEX_<FLAG>)", file, k)
				continue
			}
			checkFlag(t, file, flag, all...)
			checked++
		}
	}
	if checked < 20 {
		t.Fatalf("checked %d flags; the manifests pass more: did the reading break?", checked)
	}
}

func TestEveryPoolHasAWorkerDeployment(t *testing.T) {
	r, err := routing.Load("base/config/routing.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var deployed []string
	for path, ms := range deployments(t) {
		for _, m := range ms {
			for _, c := range m.Spec.Template.Spec.Containers {
				if len(c.Args) == 0 || c.Args[0] != "worker" {
					continue
				}
				i := slices.IndexFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--pool=") })
				if i < 0 {
					t.Errorf("%s: %s runs a worker without --pool=", path, m.Metadata.Name)
					continue
				}
				pool := strings.TrimPrefix(c.Args[i], "--pool=")
				if want := "worker-" + pool; m.Metadata.Name != want {
					t.Errorf("%s: the worker of pool %s is called %s, want %s (the HPA and PDB name it so)", path, pool, m.Metadata.Name, want)
				}
				if !slices.Contains(daemon.BuiltinPools(), pool) {
					t.Errorf("%s: pool %s is not built in; built-in pools: %v", path, pool, daemon.BuiltinPools())
				}
				deployed = append(deployed, pool)
			}
		}
	}
	slices.Sort(deployed)
	if pools := r.Pools(); !slices.Equal(deployed, pools) {
		t.Errorf("worker Deployments serve pools %v; routing.yaml has %v: one Deployment per pool", deployed, pools)
	}
}

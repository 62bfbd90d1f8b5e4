package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// maxFileBytes bounds a config file: it holds flags, not data.
const maxFileBytes = 1 << 20

// FileError is a problem in a config file, at its line; Key names the
// setting when there is one. It never repeats a value: values may be
// secrets.
type FileError struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *FileError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Key, e.Msg)
}

// ApplyFile sets the flags of fs from the YAML config file at path, whose
// keys are long flag names (nats-url: nats://..., api-keys: [a:b, c:d]).
// Flags already set (on the command line or from the environment) keep
// their value, so the order is defaults < file < environment < flags when
// ApplyEnv runs first. A key that is no flag of fs is an error unless
// elsewhere(key) says another command takes it: then it is skipped, so
// several commands can share one file. Unknown keys, lists given to
// single-valued flags, maps and values of the wrong type are errors at
// file:line naming the key; on any error no flag is changed.
func ApplyFile(fs *pflag.FlagSet, path string, elsewhere func(key string) bool) error {
	data, err := readFile(path)
	if err != nil {
		return err
	}
	sets, err := parseFile(fs, path, data, elsewhere)
	if err != nil {
		return err
	}
	for i := range sets {
		s := &sets[i]
		if err := s.apply(fs); err != nil {
			// A failed Set may have written to its flag (pflag's numbers
			// do): undo it too.
			for _, done := range sets[:i+1] {
				done.undo()
			}
			// The value is not repeated: it may be a secret.
			return &FileError{File: path, Line: s.line, Key: s.flag.Name, Msg: "not a valid " + s.flag.Value.Type()}
		}
	}
	return nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return nil, &FileError{File: path, Line: 1, Msg: fmt.Sprintf("larger than %d bytes; a config file holds flags, not data", maxFileBytes)}
	}
	return data, nil
}

// setting is one key of the file, to be set on its flag; old is what the
// flag held before, to undo it.
type setting struct {
	flag   *pflag.Flag
	line   int
	value  string   // for single-valued flags
	list   []string // for list flags
	isList bool
	old    string
	oldSet []string
}

func (s *setting) apply(fs *pflag.FlagSet) error {
	if sv, ok := s.flag.Value.(pflag.SliceValue); ok {
		s.oldSet = sv.GetSlice()
	} else {
		s.old = s.flag.Value.String()
	}
	if !s.isList {
		return fs.Set(s.flag.Name, s.value)
	}
	if err := s.flag.Value.(pflag.SliceValue).Replace(s.list); err != nil {
		return err
	}
	s.flag.Changed = true
	return nil
}

// undo puts back the value the flag had before apply.
func (s *setting) undo() {
	if sv, ok := s.flag.Value.(pflag.SliceValue); ok {
		_ = sv.Replace(s.oldSet)
	} else {
		_ = s.flag.Value.Set(s.old)
	}
	s.flag.Changed = false
}

func parseFile(fs *pflag.FlagSet, path string, data []byte, elsewhere func(string) bool) ([]setting, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // an empty file sets nothing
		}
		line, msg := YAMLErrorAt(err)
		return nil, &FileError{File: path, Line: line, Msg: "invalid YAML: " + msg}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &FileError{File: path, Line: extra.Line, Msg: "a config file holds one YAML document; remove the second one"}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, nil // only comments
	}
	if root.Kind != yaml.MappingNode {
		return nil, &FileError{File: path, Line: root.Line, Msg: "want a map of flag names to values (nats-url: nats://...)"}
	}
	seen := map[string]int{}
	var sets []setting
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		at := func(format string, args ...any) error {
			return &FileError{File: path, Line: k.Line, Key: key, Msg: fmt.Sprintf(format, args...)}
		}
		if k.Kind != yaml.ScalarNode {
			return nil, &FileError{File: path, Line: k.Line, Msg: "a key must be a flag name"}
		}
		if prev, dup := seen[key]; dup {
			return nil, at("given twice (first at line %d)", prev)
		}
		seen[key] = k.Line
		f := fs.Lookup(key)
		switch {
		case key == "config":
			return nil, at("a config file cannot name another one")
		case f == nil && elsewhere != nil && elsewhere(key):
			continue // another command's setting, in a shared file
		case f == nil:
			return nil, at("unknown key: this command has no --%s flag (see --help)", key)
		case f.Changed:
			continue // the environment or the command line wins
		}
		s, err := checkValue(f, v)
		if err != nil {
			return nil, &FileError{File: path, Line: v.Line, Key: key, Msg: err.Error()}
		}
		s.line = v.Line
		sets = append(sets, s)
	}
	return sets, nil
}

// checkValue turns one YAML value into a setting for f.
func checkValue(f *pflag.Flag, v *yaml.Node) (setting, error) {
	s := setting{flag: f}
	_, isList := f.Value.(pflag.SliceValue)
	switch {
	case v.Kind == yaml.AliasNode || v.Anchor != "" || v.Tag == "!!merge":
		return s, errors.New("anchors and aliases are not used in a config file; write the value out")
	case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
		return s, errors.New("has no value; give one or remove the key")
	case v.Kind == yaml.MappingNode:
		return s, fmt.Errorf("want a %s, not a map", f.Value.Type())
	case v.Kind == yaml.SequenceNode && !isList:
		return s, fmt.Errorf("takes one value (a %s), not a list", f.Value.Type())
	case v.Kind == yaml.SequenceNode:
		s.isList = true
		for _, item := range v.Content {
			if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
				return s, fmt.Errorf("line %d: a list item must be a plain value", item.Line)
			}
			s.list = append(s.list, item.Value)
		}
	default:
		// One value, for a list flag too: parsed as on the command line
		// (a list flag splits it at commas).
		s.value = v.Value
	}
	return s, nil
}

// WithoutPath is err without the path an *os.PathError repeats, for a
// message that names the file (and the flag) itself.
func WithoutPath(err error) error {
	if pe, ok := errors.AsType[*os.PathError](err); ok {
		return pe.Err
	}
	return err
}

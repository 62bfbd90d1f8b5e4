// Package output owns how cortexctl commands print: the -o format
// (table, wide, json, yaml), stable JSON and YAML of proto messages and
// lists (pretty for one value, one line or one document per record for a
// stream), aligned tables, colours for job states, the progress spinner on
// stderr and the human forms of ages and long strings. It decides how
// things look, never what a command prints or where its data comes from.
package output

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// Format is the value of -o/--output. The zero value is Table.
type Format string

// The formats. Table is the default whether or not stdout is a terminal
// (as with kubectl); JSON and YAML are stable for scripts.
const (
	Table Format = "table"
	Wide  Format = "wide"
	JSON  Format = "json"
	YAML  Format = "yaml"
)

// Formats lists every format, in the order help shows them.
var Formats = []Format{Table, Wide, JSON, YAML}

// ParseFormat reads an -o value; "" is Table.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(strings.TrimSpace(s))); f {
	case "":
		return Table, nil
	case Table, Wide, JSON, YAML:
		return f, nil
	}
	return "", fmt.Errorf("output format %q: use table, wide, json or yaml", s)
}

// String returns the format's name; the zero value is "table".
func (f Format) String() string {
	if f == "" {
		return string(Table)
	}
	return string(f)
}

// Set parses s into f, so that a *Format is a pflag.Value.
func (f *Format) Set(s string) error {
	v, err := ParseFormat(s)
	if err != nil {
		return err
	}
	*f = v
	return nil
}

// Type names the flag's value in help.
func (f *Format) Type() string { return "format" }

// Machine reports whether f is for programs (json or yaml).
func (f Format) Machine() bool { return f == JSON || f == YAML }

// AddFormatFlag adds -o/--output to cmd, stored in f, with shell
// completion of the format names.
func AddFormatFlag(cmd *cobra.Command, f *Format) {
	cmd.Flags().VarP(f, "output", "o", "output format: table, wide, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		names := make([]string, len(Formats))
		for i, f := range Formats {
			names[i] = string(f)
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	})
}

// Printer writes a command's data to its stdout in the chosen format.
type Printer struct {
	Out    io.Writer
	Format Format
	// Color turns on ANSI colours in Colorize (and so in tables).
	Color bool
	// widths are the column widths of the tables printed so far.
	widths []int
}

// New returns a Printer on out; colour is on when ColorEnabled(out).
func New(out io.Writer, format Format) *Printer {
	return &Printer{Out: out, Format: format, Color: ColorEnabled(out)}
}

// Wide reports whether the caller should add its wide columns.
func (p *Printer) Wide() bool { return p.Format == Wide }

// Machine reports whether the format is json or yaml.
func (p *Printer) Machine() bool { return p.Format.Machine() }

// Print writes v as JSON or YAML, whichever p.Format is; commands print
// tables themselves and call Print for the machine formats. It is for a
// command that prints one value; a stream of values goes through Record.
func (p *Printer) Print(v any) error {
	switch p.Format {
	case JSON:
		return p.JSON(v)
	case YAML:
		return p.YAML(v)
	}
	return fmt.Errorf("print %s: only json and yaml print whole values; this is a bug in the command", p.Format)
}

// JSON writes v as JSON indented by two spaces, then a newline. A
// proto.Message is marshalled with MarshalProto (lowerCamel names as
// Connect uses, zero values written out); a List marshals its items the same way;
// anything else goes through encoding/json. The bytes are stable: the
// same value always prints the same.
func (p *Printer) JSON(v any) error {
	b, err := marshalJSON(v)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return fmt.Errorf("format json: %w", err)
	}
	out.WriteByte('\n')
	_, err = p.Out.Write(out.Bytes())
	return err
}

// YAML writes v as YAML converted from its JSON (see JSON), so both use
// the same field names. Keys are sorted.
func (p *Printer) YAML(v any) error {
	b, err := marshalJSON(v)
	if err != nil {
		return err
	}
	y, err := yaml.JSONToYAML(b)
	if err != nil {
		return fmt.Errorf("format yaml: %w", err)
	}
	_, err = p.Out.Write(y)
	return err
}

// Record writes v as one record of a stream: the commands that print
// records as they come (tail, jobs watch, jobs list --watch) call it for
// each, where a command that prints one value calls Print. In json a
// record is one compact JSON object on one line (JSON Lines, as line
// readers and jq -c want); in yaml it is its own document, starting with
// "---", so that a YAML reader sees one document per record instead of
// one document whose keys repeat. The field names are those of JSON and
// YAML, and as stable. A record goes out in a single write.
func (p *Printer) Record(v any) error {
	if !p.Machine() {
		return fmt.Errorf("print %s: only json and yaml print records; this is a bug in the command", p.Format)
	}
	b, err := marshalJSON(v)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	switch p.Format {
	case JSON:
		out.Grow(len(b) + 1)
		out.Write(b)
		out.WriteByte('\n')
	case YAML:
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return fmt.Errorf("format yaml: %w", err)
		}
		out.Grow(len(yamlDocStart) + len(y))
		out.WriteString(yamlDocStart)
		out.Write(y)
	}
	_, err = p.Out.Write(out.Bytes())
	return err
}

// yamlDocStart begins every YAML document of a stream of records.
const yamlDocStart = "---\n"

// List is how a list prints in json and yaml:
// {"items": [...], "nextPageToken": "..."}, with the token left out when
// empty and [] for no items. Items that are proto messages are marshalled
// with MarshalProto.
type List[T any] struct {
	Items         []T
	NextPageToken string
}

// MarshalJSON implements json.Marshaler.
func (l List[T]) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"items":[`)
	for i, it := range l.Items {
		if i > 0 {
			b.WriteByte(',')
		}
		j, err := marshalJSON(it)
		if err != nil {
			return nil, err
		}
		b.Write(j)
	}
	b.WriteByte(']')
	if l.NextPageToken != "" {
		tok, err := json.Marshal(l.NextPageToken)
		if err != nil {
			return nil, err
		}
		b.WriteString(`,"nextPageToken":`)
		b.Write(tok)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// MarshalProto is m as the commands print it in json and yaml: protojson
// with every field and its value, 0, "" and false included (messages and
// optional fields only when set), so that a script reads "workers": 0
// rather than guess that a missing field means none.
func MarshalProto(m proto.Message) ([]byte, error) {
	return protojson.MarshalOptions{EmitDefaultValues: true}.Marshal(m)
}

// marshalJSON returns v as compact JSON. protojson output is deliberately
// unstable in its whitespace, so it is compacted here and indented by the
// caller.
func marshalJSON(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		b, err := MarshalProto(m)
		if err != nil {
			return nil, fmt.Errorf("format json: %w", err)
		}
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			return nil, fmt.Errorf("format json: %w", err)
		}
		return c.Bytes(), nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // a prompt with <, > or & stays readable
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("format json: %w", err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

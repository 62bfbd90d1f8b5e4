package output

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/cortex-os/core/internal/syncbuf"
)

// ttyBuffer is a terminal in tests: a locked buffer that says it is one.
type ttyBuffer struct{ syncbuf.Buffer }

func (t *ttyBuffer) IsTerminal() bool { return true }

var _ TTY = (*ttyBuffer)(nil)

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]Format{"": Table, "table": Table, "wide": Wide, "JSON": JSON, " yaml ": YAML} {
		if got, err := ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	_, err := ParseFormat("xml")
	if err == nil || !strings.Contains(err.Error(), "table, wide, json or yaml") {
		t.Errorf("ParseFormat(xml) = %v, want an error listing the formats", err)
	}
	var zero Format
	if zero.String() != "table" || !JSON.Machine() || Wide.Machine() {
		t.Error("zero Format is not table, or Machine is wrong")
	}
}

func TestFormatFlag(t *testing.T) {
	var f Format
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	AddFormatFlag(cmd, &f)
	cmd.SetArgs([]string{"-o", "yaml"})
	if err := cmd.Execute(); err != nil || f != YAML {
		t.Fatalf("-o yaml: %q %v", f, err)
	}
	cmd.SetArgs([]string{"--output=xml"})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetOut(&bytes.Buffer{})
	if err := cmd.Execute(); err == nil {
		t.Error("--output=xml accepted")
	}
	if got := cmd.Flags().Lookup("output").DefValue; got != "table" {
		t.Errorf("default shown in help = %q, want table", got)
	}
}

func fieldProto() *descriptorpb.FieldDescriptorProto {
	return &descriptorpb.FieldDescriptorProto{
		Name:     proto.String("job_id"),
		Number:   proto.Int32(1),
		TypeName: proto.String("<x> & y"),
	}
}

func TestJSONProtoIsStableLowerCamel(t *testing.T) {
	var b bytes.Buffer
	p := &Printer{Out: &b, Format: JSON}
	if err := p.JSON(fieldProto()); err != nil {
		t.Fatal(err)
	}
	want := `{
  "name": "job_id",
  "number": 1,
  "typeName": "<x> & y"
}
`
	if b.String() != want {
		t.Errorf("JSON =\n%s\nwant\n%s", b.String(), want)
	}
	// protojson varies its whitespace between runs and builds; the printer
	// must not.
	for range 20 {
		var again bytes.Buffer
		if err := (&Printer{Out: &again}).JSON(fieldProto()); err != nil || again.String() != want {
			t.Fatalf("unstable JSON:\n%s", again.String())
		}
	}
}

func TestJSONList(t *testing.T) {
	var b bytes.Buffer
	p := &Printer{Out: &b, Format: JSON}
	l := List[*descriptorpb.FieldDescriptorProto]{Items: []*descriptorpb.FieldDescriptorProto{fieldProto(), {Name: proto.String("b")}}, NextPageToken: "tok"}
	if err := p.Print(l); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Items []map[string]any `json:"items"`
		Next  string           `json:"nextPageToken"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v in\n%s", err, b.String())
	}
	if len(got.Items) != 2 || got.Items[0]["typeName"] != "<x> & y" || got.Next != "tok" {
		t.Errorf("list JSON:\n%s", b.String())
	}
	if !strings.Contains(b.String(), `"typeName": "<x> & y"`) {
		t.Errorf("list JSON escaped HTML characters:\n%s", b.String())
	}
	if !strings.HasPrefix(b.String(), "{\n  \"items\": [\n    {\n") {
		t.Errorf("list JSON is not indented by two spaces:\n%s", b.String())
	}

	b.Reset()
	if err := p.JSON(List[any]{}); err != nil {
		t.Fatal(err)
	}
	if b.String() != "{\n  \"items\": []\n}\n" {
		t.Errorf("empty list JSON = %q, want items: [] and no token", b.String())
	}
}

func TestJSONPlainValue(t *testing.T) {
	var b bytes.Buffer
	v := struct {
		Name string `json:"name"`
		Note string `json:"note,omitempty"`
	}{Name: "a<b>"}
	if err := (&Printer{Out: &b}).JSON(v); err != nil {
		t.Fatal(err)
	}
	if b.String() != "{\n  \"name\": \"a<b>\"\n}\n" {
		t.Errorf("JSON = %q", b.String())
	}
}

func TestYAML(t *testing.T) {
	var b bytes.Buffer
	p := &Printer{Out: &b, Format: YAML}
	if err := p.Print(List[*descriptorpb.FieldDescriptorProto]{Items: []*descriptorpb.FieldDescriptorProto{fieldProto()}}); err != nil {
		t.Fatal(err)
	}
	want := `items:
- name: job_id
  number: 1
  typeName: <x> & y
`
	if b.String() != want {
		t.Errorf("YAML =\n%s\nwant\n%s", b.String(), want)
	}
}

func TestPrintRefusesTable(t *testing.T) {
	if err := (&Printer{Out: &bytes.Buffer{}, Format: Table}).Print(1); err == nil {
		t.Error("Print in table format did not fail")
	}
}

func TestTable(t *testing.T) {
	var b bytes.Buffer
	p := &Printer{Out: &b, Color: true}
	err := p.Table([]string{"ID", "STATE", "PROMPT"}, [][]string{
		{"a1", p.Colorize("COMPLETED"), "hello\nworld"},
		{"b22", p.Colorize("DENIED"), ""},
		{"c", "?", "x\ty"},
	})
	if err != nil {
		t.Fatal(err)
	}
	plain := ansiSeq.ReplaceAllString(b.String(), "")
	want := "ID    STATE       PROMPT\n" +
		"a1    COMPLETED   hello world\n" +
		"b22   DENIED\n" +
		"c     ?           x y\n"
	if plain != want {
		t.Errorf("table (colours removed) =\n%q\nwant\n%q", plain, want)
	}
	if !strings.Contains(b.String(), green+"COMPLETED"+reset) {
		t.Errorf("no colour in %q", b.String())
	}
}

func TestColorize(t *testing.T) {
	for state, want := range map[string]string{
		"COMPLETED": green, "JOB_STATE_FAILED": red, "TIMEOUT": red, "DENIED": boldRed,
		"CANCELLED": grey, "RUNNING": cyan, "DISPATCHED": cyan, "PENDING": yellow,
		"SCHEDULED": yellow, "WAITING_APPROVAL": yellow, "running": cyan,
	} {
		if got := ColorizeState(state, true); got != want+state+reset {
			t.Errorf("ColorizeState(%q) = %q", state, got)
		}
		if got := ColorizeState(state, false); got != state {
			t.Errorf("ColorizeState(%q, off) = %q", state, got)
		}
	}
	if got := ColorizeState("SOMETHING", true); got != "SOMETHING" {
		t.Errorf("unknown state coloured: %q", got)
	}
}

func TestColorEnabled(t *testing.T) {
	t.Setenv("NO_COLOR", "")
	t.Setenv("TERM", "xterm-256color")
	if ColorEnabled(&bytes.Buffer{}) {
		t.Error("colour on a bytes.Buffer")
	}
	if !ColorEnabled(&ttyBuffer{}) {
		t.Error("no colour on a terminal")
	}
	if p := New(&ttyBuffer{}, Table); !p.Color {
		t.Error("New did not turn colour on for a terminal")
	}
	t.Setenv("NO_COLOR", "1")
	if ColorEnabled(&ttyBuffer{}) {
		t.Error("colour despite NO_COLOR")
	}
	t.Setenv("NO_COLOR", "")
	t.Setenv("TERM", "dumb")
	if ColorEnabled(&ttyBuffer{}) {
		t.Error("colour on TERM=dumb")
	}
	if IsTerminal(nil) {
		t.Error("nil writer is a terminal")
	}
}

func TestTableWithoutHeader(t *testing.T) {
	var b bytes.Buffer
	if err := (&Printer{Out: &b}).Table(nil, [][]string{{"name:", "local"}, {"api key:", "…"}}); err != nil {
		t.Fatal(err)
	}
	if want := "name:      local\napi key:   …\n"; b.String() != want {
		t.Errorf("table = %q, want %q", b.String(), want)
	}
}

func TestRecord(t *testing.T) {
	var b bytes.Buffer
	v := struct {
		Name string `json:"name"`
		Note string `json:"note"`
	}{Name: "a<b>", Note: "two\nlines"}
	p := &Printer{Out: &b, Format: JSON}
	for _, r := range []any{fieldProto(), v} {
		if err := p.Record(r); err != nil {
			t.Fatal(err)
		}
	}
	want := `{"name":"job_id","number":1,"typeName":"<x> & y"}` + "\n" + `{"name":"a<b>","note":"two\nlines"}` + "\n"
	if b.String() != want {
		t.Errorf("json records =\n%s\nwant\n%s", b.String(), want)
	}

	b.Reset()
	p.Format = YAML
	for _, r := range []any{fieldProto(), v} {
		if err := p.Record(r); err != nil {
			t.Fatal(err)
		}
	}
	want = `---
name: job_id
number: 1
typeName: <x> & y
---
name: a<b>
note: |-
  two
  lines
`
	if b.String() != want {
		t.Errorf("yaml records =\n%s\nwant\n%s", b.String(), want)
	}

	if err := (&Printer{Out: &bytes.Buffer{}, Format: Wide}).Record(v); err == nil {
		t.Error("Record in wide format did not fail")
	}
}

// A record goes out in one write, so that a reader of a pipe never sees
// half of one.
func TestRecordIsOneWrite(t *testing.T) {
	for _, f := range []Format{JSON, YAML} {
		w := &countingWriter{}
		if err := (&Printer{Out: w, Format: f}).Record(fieldProto()); err != nil {
			t.Fatal(err)
		}
		if w.writes != 1 {
			t.Errorf("%s record in %d writes", f, w.writes)
		}
	}
}

type countingWriter struct{ writes int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return len(p), nil
}

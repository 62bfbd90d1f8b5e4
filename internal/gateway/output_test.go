package gateway

import (
	"testing"
	"time"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Pieces that come after a job's end (the end overtook them in this
// gateway) are still handed on while they keep coming; then the flush
// stops.
func TestFlushOutputTakesPiecesStillOnTheirWay(t *testing.T) {
	pieces := make(chan *cortexv1.JobOutput, 4)
	pieces <- &cortexv1.JobOutput{Seq: 1, Text: "a"}
	go func() {
		for seq, text := range []string{"b", "c"} {
			time.Sleep(outputSettle / 5)
			pieces <- &cortexv1.JobOutput{Seq: uint64(seq + 2), Text: text}
		}
	}()
	var got string
	if err := flushOutput(pieces, func(o *cortexv1.JobOutput) error { got += o.GetText(); return nil }); err != nil {
		t.Fatal(err)
	}
	if got != "abc" {
		t.Fatalf("flushed %q, want abc", got)
	}
}

package job

import (
	"bytes"
	"testing"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func TestFollowerEndsWithTheResult(t *testing.T) {
	piece := func(attempt uint32, seq uint64, text string) *cortexv1.JobOutput {
		return &cortexv1.JobOutput{JobId: "j", Attempt: attempt, Seq: seq, Text: text}
	}
	cases := map[string]struct {
		pieces  []*cortexv1.JobOutput
		result  string
		attempt uint32
		out     string
		errOut  string
	}{
		"all pieces came": {[]*cortexv1.JobOutput{piece(1, 1, "You "), piece(1, 2, "said: hi")}, "You said: hi", 1,
			"You said: hi\n", ""},
		"the end came with the result only": {[]*cortexv1.JobOutput{piece(1, 1, "You ")}, "You said: hi", 1,
			"You said: hi\n", ""},
		"no piece came": {nil, "You said: hi\n", 1,
			"You said: hi\n", ""},
		"a piece was lost": {[]*cortexv1.JobOutput{piece(1, 1, "You "), piece(1, 3, "hi")}, "You said: hi", 1,
			"You \nYou said: hi\n", "(the streamed output was incomplete; the whole result follows)\n"},
		"the start was missed": {[]*cortexv1.JobOutput{piece(1, 2, "said: "), piece(1, 3, "hi")}, "You said: hi", 1,
			"You said: hi\n", ""},
		"a retry starts over": {[]*cortexv1.JobOutput{piece(1, 1, "You sa"), piece(2, 1, "You "), piece(1, 2, "id: late"), piece(2, 2, "said: hi")}, "You said: hi", 2,
			"You sa\nYou said: hi\n", "(attempt 2 starts over)\n"},
		"the pieces are not the result": {[]*cortexv1.JobOutput{piece(1, 1, "Hello")}, "You said: hi", 1,
			"Hello\nYou said: hi\n", "(the job's recorded result follows)\n"},
		"code-python: stdout streamed, JSON recorded": {[]*cortexv1.JobOutput{piece(1, 1, "hello\n")}, `{"stdout":"hello\n","stderr":"","exit_code":0}`, 1,
			"hello\n{\"stdout\":\"hello\\n\",\"stderr\":\"\",\"exit_code\":0}\n", "(the job's recorded result follows)\n"},
		"binary results get no newline": {nil, "\xff\x00", 1, "\xff\x00", ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			first := 0
			f := &follower{out: &out, errOut: &errOut, beforeFirst: func() { first++ }}
			for _, p := range c.pieces {
				if err := f.piece(p); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.finish(c.result, c.attempt); err != nil {
				t.Fatal(err)
			}
			if out.String() != c.out || errOut.String() != c.errOut {
				t.Errorf("stdout %q stderr %q, want %q and %q", out.String(), errOut.String(), c.out, c.errOut)
			}
			if first != 1 {
				t.Errorf("beforeFirst ran %d times, want once", first)
			}
		})
	}
}

package job

import (
	"context"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// follower prints a job's output as its handler streams it and, once the
// job has ended, whatever of the recorded result it has not shown. Pieces
// are best effort (a slow reader or a gateway restart loses some, and a
// retry starts over) while the result is the truth, so the end compares
// the two: when what was shown of the last attempt is the start of the
// result, only the rest is printed; otherwise the whole result follows a
// note on errOut, which says whether pieces were lost.
type follower struct {
	out, errOut io.Writer
	// beforeFirst, when not nil, runs before the first piece is printed
	// (to stop a spinner).
	beforeFirst func()

	attempt uint32
	seq     uint64
	shown   strings.Builder // what the current attempt has printed
	lost    bool            // a piece of the current attempt did not come
	printed bool            // anything went to out
	last    byte            // the last byte that went to out
}

// piece prints one piece of output.
func (f *follower) piece(o *cortexv1.JobOutput) error {
	switch {
	case o.GetAttempt() < f.attempt:
		return nil // a straggler of an attempt that was retried
	case o.GetAttempt() > f.attempt:
		if f.printed {
			f.endLine()
			fmt.Fprintf(f.errOut, "(attempt %d starts over)\n", o.GetAttempt())
		}
		f.attempt, f.seq, f.lost = o.GetAttempt(), 0, false
		f.shown.Reset()
	}
	if f.lost {
		return nil
	}
	if o.GetSeq() != f.seq+1 {
		// Printing on would leave a hole; the result fills it at the end.
		f.lost = true
		return nil
	}
	f.seq = o.GetSeq()
	f.shown.WriteString(o.GetText())
	return f.write(o.GetText())
}

func (f *follower) write(s string) error {
	if s == "" {
		return nil
	}
	if !f.printed && f.beforeFirst != nil {
		f.beforeFirst()
	}
	f.printed = true
	f.last = s[len(s)-1]
	_, err := io.WriteString(f.out, s)
	return err
}

// endLine ends a line that output left open, before something else is
// printed.
func (f *follower) endLine() {
	if f.printed && f.last != '\n' {
		_ = f.write("\n")
	}
}

// finish prints what the pieces did not show of result, the output of
// the job's attempt that completed, and ends the line.
func (f *follower) finish(result string, attempt uint32) error {
	rest, shown := result, f.shown.String()
	whole := f.attempt == attempt && !f.lost
	switch {
	case whole && strings.HasPrefix(result, shown):
		rest = result[len(shown):]
	case !f.printed:
	case whole:
		// Every piece came and the result is something else: a handler
		// whose stream is not its result (code-python streams stdout and
		// records stdout, stderr and the exit status as JSON).
		f.endLine()
		fmt.Fprintln(f.errOut, "(the job's recorded result follows)")
	default:
		f.endLine()
		fmt.Fprintln(f.errOut, "(the streamed output was incomplete; the whole result follows)")
	}
	if err := f.write(rest); err != nil {
		return err
	}
	if utf8.ValidString(result) {
		f.endLine()
	}
	return nil
}

// finishJob ends the output of a job that has ended: the rest of its
// result when it completed, else the open line.
func (f *follower) finishJob(ctx context.Context, c cortexv1connect.GatewayServiceClient, j *cortexv1.Job) error {
	if j.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		f.endLine()
		return nil
	}
	r, err := c.GetResult(ctx, &cortexv1.GetResultRequest{JobId: j.GetJobId()})
	if err != nil {
		return err
	}
	return f.finish(r.GetText()+string(r.GetData()), j.GetAttempt())
}

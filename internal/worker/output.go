package worker

import (
	"sync"
	"unicode/utf8"

	"github.com/cortex-os/core/internal/bus"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// maxOutputPiece bounds the text of one JobOutput packet, well under the
// bus's packet limit; a larger write goes out in several pieces.
const maxOutputPiece = 32 << 10

// outputStream is a handler's plugins.Job.Stream: every write goes to
// the job's output subject as numbered JobOutput packets, for whoever
// follows the job. It never fails the handler: output that cannot be
// published is lost to followers, not to the job, whose result is what
// is recorded.
type outputStream struct {
	conn    *bus.Conn
	traceID string
	job     *cortexv1.JobRequest
	// started, when set, is called before the first piece goes out.
	started func()

	mu      sync.Mutex
	seq     uint64
	partial []byte // the end of a write that split a UTF-8 sequence
}

func (s *outputStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	text := append(s.partial, p...)
	// Hold back an incomplete UTF-8 sequence at the end: the next write
	// completes it (a token can end mid-rune).
	cut := len(text)
	for i := 1; i <= utf8.UTFMax-1 && i <= len(text); i++ {
		if r := text[len(text)-i]; utf8.RuneStart(r) {
			if !utf8.FullRune(text[len(text)-i:]) {
				cut = len(text) - i
			}
			break
		}
	}
	s.partial = append([]byte(nil), text[cut:]...)
	text = text[:cut]
	for len(text) > 0 {
		n := min(len(text), maxOutputPiece)
		for n < len(text) && n > 0 && !utf8.RuneStart(text[n]) {
			n--
		}
		if n == 0 {
			n = min(len(text), maxOutputPiece)
		}
		if s.started != nil {
			s.started()
			s.started = nil
		}
		s.seq++
		_ = s.conn.Publish(bus.JobOutputSubject(s.job.GetJobId()), &cortexv1.BusPacket{
			TraceId: s.traceID,
			Payload: &cortexv1.BusPacket_JobOutput{JobOutput: &cortexv1.JobOutput{
				JobId: s.job.GetJobId(), Attempt: s.job.GetAttempt(), Seq: s.seq, Text: string(text[:n]),
				TenantId: s.job.GetTenantId(), Topic: s.job.GetTopic(),
			}},
		})
		text = text[n:]
	}
	return len(p), nil
}

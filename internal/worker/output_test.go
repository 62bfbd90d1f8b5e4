package worker_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/cortex-os/core/internal/bus"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/plugins"
)

// outputs collects the JobOutput packets published for one job.
type outputs struct {
	mu  sync.Mutex
	got []*cortexv1.JobOutput
}

func (o *outputs) all() []*cortexv1.JobOutput {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]*cortexv1.JobOutput(nil), o.got...)
}

func subscribeOutput(t *testing.T, natsURL, id string) *outputs {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	o := &outputs{}
	if _, err := nc.Subscribe(bus.JobOutputSubject(id), func(m *nats.Msg) {
		p, err := bus.Decode(m.Data)
		if err != nil {
			t.Errorf("undecodable output packet: %v", err)
			return
		}
		o.mu.Lock()
		o.got = append(o.got, p.GetJobOutput())
		o.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return o
}

func TestStreamedOutputIsPublishedInOrder(t *testing.T) {
	big := strings.Repeat("é", 20<<10) // 40 KiB: more than one packet
	writes := []string{"h\xc3", "\xa9llo", " wor", "ld ", big, "\xe2\x82", "\xac"}
	r := newRig(t, map[string]plugins.Handler{
		"job.talk": plugins.HandlerFunc(func(_ context.Context, j *plugins.Job) (*plugins.Result, error) {
			for _, w := range writes {
				if _, err := j.Stream.Write([]byte(w)); err != nil {
					return nil, err
				}
			}
			return &plugins.Result{Output: strings.Join(writes, "")}, nil
		}),
	})
	o := subscribeOutput(t, r.natsURL, "j-talk")
	if res := r.dispatch(t, "j-talk", "job.talk", "x"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		t.Fatalf("job ended %v", res)
	}
	want := strings.Join(writes, "")
	var got []*cortexv1.JobOutput
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		got = o.all()
		var text strings.Builder
		for _, p := range got {
			text.WriteString(p.GetText())
		}
		if text.String() == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pieces say %d bytes, want the %d written", text.Len(), len(want))
		}
	}
	for i, p := range got {
		if p.GetSeq() != uint64(i+1) || p.GetJobId() != "j-talk" || p.GetAttempt() != 1 {
			t.Errorf("piece %d: job %s attempt %d seq %d, want j-talk attempt 1 seq %d", i, p.GetJobId(), p.GetAttempt(), p.GetSeq(), i+1)
		}
		if !utf8.ValidString(p.GetText()) || p.GetText() == "" {
			t.Errorf("piece %d is %q: every piece is whole UTF-8 (a split rune is held back)", i, p.GetText())
		}
	}
	if got[0].GetText() != "h" || got[1].GetText() != "éllo" {
		t.Errorf("first pieces %q, %q: want the split é held back until its second byte came", got[0].GetText(), got[1].GetText())
	}
	if len(got) < 6 {
		t.Errorf("%d pieces, want the 40 KiB write split in several", len(got))
	}
}

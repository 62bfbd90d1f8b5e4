package llm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/cortex-os/core/plugins"
)

// maxEventLine bounds one line of the upstream's event stream.
const maxEventLine = 1 << 20

var (
	errCut     = errors.New("the stream ended before the answer was complete (retried)")
	errTooLong = errors.New("the answer is longer than this worker accepts")
)

// answer gathers the text and usage of one reply, writing the text to
// stream (when not nil) as it comes.
type answer struct {
	stream io.Writer
	limit  int
	text   strings.Builder
	usage  *plugins.Usage
}

func (a *answer) add(s string) error {
	if s == "" {
		return nil
	}
	if a.text.Len()+len(s) > a.limit {
		return fmt.Errorf("%w (%d bytes): ask for less, e.g. with max_tokens", errTooLong, a.limit)
	}
	a.text.WriteString(s)
	if a.stream != nil {
		// Best effort: the result, not the stream, is what is recorded.
		_, _ = io.WriteString(a.stream, s)
	}
	return nil
}

// wireUsage is usage as the upstream sends it.
type wireUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

func (u *wireUsage) usage() *plugins.Usage {
	if u == nil {
		return nil
	}
	return &plugins.Usage{PromptTokens: clamp32(u.PromptTokens), CompletionTokens: clamp32(u.CompletionTokens), TotalTokens: clamp32(u.TotalTokens)}
}

func clamp32(n int64) uint32 {
	switch {
	case n < 0:
		return 0
	case n > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(n)
}

// chunk is one event of a streamed reply (chat.completion.chunk).
type chunk struct {
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *wireUsage       `json:"usage"`
	Error *json.RawMessage `json:"error"`
}

// readStream reads a server-sent event stream of chat completion chunks
// into a, until "data: [DONE]". A stream that ends before it (or before a
// finish reason) was cut short; an event that is not a chunk is an error.
func readStream(r io.Reader, a *answer) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var data []string // the data lines of the event being read
	finished := false
	for {
		line, err := readLine(br)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if len(line) > 0 {
			if field, value, ok := eventField(line); ok && field == "data" {
				data = append(data, value)
			}
			continue
		}
		// A blank line ends an event.
		done, err := dispatch(strings.Join(data, "\n"), a, &finished)
		data = data[:0]
		if err != nil || done {
			return err
		}
	}
	// The last event may lack its blank line.
	if len(data) > 0 {
		done, err := dispatch(strings.Join(data, "\n"), a, &finished)
		if err != nil || done {
			return err
		}
	}
	if !finished {
		return errCut
	}
	return nil
}

// readLine reads one line without its line ending. A line cut off by
// the end of the stream is dropped: its event is incomplete.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		part, err := br.ReadSlice('\n')
		if len(line)+len(part) > maxEventLine {
			return nil, fmt.Errorf("the upstream sent an event line over %d bytes", maxEventLine)
		}
		line = append(line, part...)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil:
			if errors.Is(err, io.EOF) {
				return nil, io.EOF
			}
			return nil, err
		}
		return bytes.TrimRight(line, "\r\n"), nil
	}
}

// eventField splits an event stream line into field and value; comments
// (lines starting with ':') are not fields.
func eventField(line []byte) (field, value string, ok bool) {
	if line[0] == ':' {
		return "", "", false
	}
	f, v, _ := bytes.Cut(line, []byte(":"))
	return string(f), string(bytes.TrimPrefix(v, []byte(" "))), true
}

// dispatch handles the data of one event and reports whether the stream
// is done.
func dispatch(data string, a *answer, finished *bool) (bool, error) {
	switch strings.TrimSpace(data) {
	case "":
		return false, nil
	case "[DONE]":
		return true, nil
	}
	var c chunk
	if err := json.Unmarshal([]byte(data), &c); err != nil {
		return false, fmt.Errorf("the upstream sent a malformed stream event (want a JSON chat completion chunk after \"data:\"): %s", quote(data))
	}
	if c.Error != nil {
		return false, fmt.Errorf("the upstream reported an error mid-stream: %s", errorText(*c.Error))
	}
	for _, ch := range c.Choices {
		if ch.Index != 0 {
			continue
		}
		if err := a.add(ch.Delta.Content); err != nil {
			return false, err
		}
		if ch.FinishReason != nil && *ch.FinishReason != "" {
			*finished = true
		}
	}
	if c.Usage != nil {
		a.usage = c.Usage.usage()
	}
	return false, nil
}

// completion is a whole reply (chat.completion), from an upstream that
// does not stream.
type completion struct {
	Choices []struct {
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
	} `json:"choices"`
	Usage *wireUsage       `json:"usage"`
	Error *json.RawMessage `json:"error"`
}

// readWhole reads a reply that came as one JSON body.
func readWhole(r io.Reader, a *answer) error {
	body, err := io.ReadAll(io.LimitReader(r, int64(a.limit)*2+64<<10))
	if err != nil {
		return err
	}
	var c completion
	if err := json.Unmarshal(body, &c); err != nil {
		return fmt.Errorf("the upstream answered with neither an event stream nor a JSON chat completion: %s", quote(string(body)))
	}
	if c.Error != nil {
		return fmt.Errorf("the upstream reported an error: %s", errorText(*c.Error))
	}
	if len(c.Choices) == 0 {
		return errors.New("the upstream answered with no choices")
	}
	if err := a.add(c.Choices[0].Message.Content); err != nil {
		return err
	}
	a.usage = c.Usage.usage()
	return nil
}

// quote shows the start of what the upstream sent, for an error.
func quote(s string) string {
	const show = 120
	if len(s) > show {
		return fmt.Sprintf("%q…", strings.ToValidUTF8(s[:show], ""))
	}
	return fmt.Sprintf("%q", s)
}

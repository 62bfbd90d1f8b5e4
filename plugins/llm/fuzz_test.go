package llm

import (
	"strings"
	"testing"
)

// FuzzReadStream feeds arbitrary event streams to the parser: it must
// return (an answer or an error), never panic, and never keep more than
// its limit.
func FuzzReadStream(f *testing.F) {
	for _, seed := range []string{
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
		": comment\r\nevent: x\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":-3,\"completion_tokens\":99999999999}}\r\n\r\n",
		"data: {\"error\":{\"message\":\"boom\"}}\n\n",
		"data: {\"choices\": [oops\n\n",
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\ndata: more\n\n",
		"data:[DONE]",
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a := &answer{limit: 64}
		err := readStream(strings.NewReader(s), a)
		if a.text.Len() > a.limit {
			t.Fatalf("kept %d bytes, over the limit %d (err %v)", a.text.Len(), a.limit, err)
		}
	})
}

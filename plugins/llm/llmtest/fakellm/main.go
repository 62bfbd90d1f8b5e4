// Command fakellm serves llmtest's fake OpenAI-compatible chat completions
// API, to try the chat-llm pool without a model:
//
//	go run ./plugins/llm/llmtest/fakellm --listen 127.0.0.1:11435 --delay 150ms
//	cortexctl up --llm-base-url http://127.0.0.1:11435/v1 --llm-model fake-llm
//
// It answers "You said: <your last message>" word by word, and stops on
// Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/cortex-os/core/plugins/llm/llmtest"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:11435", "address to serve on")
	delay := flag.Duration("delay", 0, "pause between the words of a streamed answer")
	key := flag.String("key", "", "API key calls must bear (none when empty)")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakellm:", err)
		os.Exit(1)
	}
	s := llmtest.NewServer(llmtest.Options{Listener: ln, Delay: *delay, Key: *key})
	fmt.Printf("fake OpenAI-compatible API on %s (model %s); Ctrl-C stops\n", s.URL, llmtest.Model)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	s.Close()
}

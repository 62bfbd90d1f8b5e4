package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"connectrpc.com/grpcreflect/v2"
	"github.com/alicebob/miniredis/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// tap records every packet published on core NATS (JetStream's own
// traffic, $JS.* and reply inboxes, is not packets and is skipped). Jobs
// handed to the schedulers are read from their stream: see submits.
type tap struct {
	mu      sync.Mutex
	packets map[string][]*cortexv1.BusPacket
}

func (r *tap) on(subject string) []*cortexv1.BusPacket {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.packets[subject])
}

type fixture struct {
	tap   *tap
	mr    *miniredis.Miniredis
	st    *store.Store
	conn  *bus.Conn // the gateway's
	other *bus.Conn // another component's, to publish events
	url   string
}

var testLog = slog.New(slog.DiscardHandler)

// setup is what a fixture may change: the store's options, and the bus
// the gateway is given (wrapping its connection).
type setup struct {
	store store.Options
	bus   func(*bus.Conn) gateway.Bus
	// wrap, when set, stands between the gateway and the store.
	wrap func(gateway.Store) gateway.Store
	// gotten, when set, is given the gateway.
	gotten func(*gateway.Gateway)
}

func newFixture(t *testing.T, opts gateway.Options) *fixture {
	t.Helper()
	return newFixtureWith(t, opts, setup{})
}

func newFixtureWith(t *testing.T, opts gateway.Options, su setup) *fixture {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	natsURL := bustest.StartJetStream(t)
	f := &fixture{tap: &tap{packets: map[string][]*cortexv1.BusPacket{}}, mr: mr, st: store.New(rdb, su.store)}
	for _, c := range []**bus.Conn{&f.conn, &f.other} {
		conn, err := bus.Connect(natsURL, "test", testLog)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(conn.Close)
		*c = conn
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// bustest made the durable streams.
	_, err := f.other.NATS().Subscribe(">", func(m *nats.Msg) {
		if strings.HasPrefix(m.Subject, "$") || strings.HasPrefix(m.Subject, "_INBOX.") {
			return // JetStream's API, advisories and acks
		}
		p, err := bus.Decode(m.Data)
		if err != nil {
			t.Errorf("undecodable packet on %s: %v", m.Subject, err)
			return
		}
		f.tap.mu.Lock()
		defer f.tap.mu.Unlock()
		f.tap.packets[m.Subject] = append(f.tap.packets[m.Subject], p)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.other.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if opts.Router == nil {
		opts.Router, _ = routing.NewRouter(map[string]string{"job.echo": "echo"})
	}
	var b gateway.Bus = f.conn
	if su.bus != nil {
		b = su.bus(f.conn)
	}
	var st gateway.Store = f.st
	if su.wrap != nil {
		st = su.wrap(st)
	}
	g, err := gateway.New(st, b, opts, testLog)
	if err != nil {
		t.Fatal(err)
	}
	if su.gotten != nil {
		su.gotten(g)
	}
	if err := g.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.conn.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(g.Handler())
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// postJSON posts body to procedure of the API at f's gateway, with headers
// (an empty value is not sent), and returns the status and the answer,
// which must be JSON.
func (f *fixture) postJSON(t *testing.T, procedure, body string, headers map[string]string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.url+"/cortex.v1.GatewayService/"+procedure, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		t.Fatalf("%s: %d with an answer that is not JSON: %v", procedure, res.StatusCode, err)
	}
	return res.StatusCode, out
}

// handed is one job the gateway handed to the schedulers: a message of the
// submit stream.
type handed struct {
	msgID string
	req   *cortexv1.JobRequest
}

// submits reads the submit stream, oldest first. Nothing consumes it in
// these tests, so it holds every hand-off the stream took (and only one of
// two with the same message id). A submit returns once the stream has its
// job, so no waiting is needed.
func (f *fixture) submits(t *testing.T) []handed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := f.other.JetStream().Stream(ctx, bus.StreamSubmit)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []handed
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != bus.SubjectJobSubmit {
			t.Fatalf("message %d of %s is on %s", seq, bus.StreamSubmit, m.Subject)
		}
		p, err := bus.Decode(m.Data)
		if err != nil {
			t.Fatalf("message %d of %s: %v", seq, bus.StreamSubmit, err)
		}
		msgID := m.Header.Get(jetstream.MsgIDHeader)
		if b := p.GetJobBatch(); b != nil {
			// A batch's jobs, each under the batch's name.
			for _, req := range b.GetJobs() {
				out = append(out, handed{msgID: msgID, req: req})
			}
			continue
		}
		out = append(out, handed{msgID: msgID, req: p.GetJobRequest()})
	}
	return out
}

// submitted is the ids of the jobs in the submit stream, oldest first.
func (f *fixture) submitted(t *testing.T) []string {
	t.Helper()
	var ids []string
	for _, h := range f.submits(t) {
		ids = append(ids, h.req.GetJobId())
	}
	return ids
}

// redisKey is the Redis key a bus pointer (redis://<key>) names.
func redisKey(t *testing.T, ptr string) string {
	t.Helper()
	k, ok := strings.CutPrefix(ptr, "redis://")
	if !ok {
		t.Fatalf("pointer %q is not redis://<key>", ptr)
	}
	return k
}

func (f *fixture) client(t *testing.T, key string) cortexv1connect.GatewayServiceClient {
	t.Helper()
	c, err := client.New(f.url, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// eventually polls cond until it holds or 5s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// move makes a transition as a scheduler or worker would, with its event.
func (f *fixture) move(t *testing.T, id string, c store.Change) {
	t.Helper()
	j, err := f.st.Transition(context.Background(), id, c, time.Now())
	if err != nil {
		t.Fatalf("move %s to %s: %v", id, c.To, err)
	}
	if err := f.other.PublishJobEvent(id, j.Proto()); err != nil {
		t.Fatal(err)
	}
}

var keys = map[string]gateway.Principal{
	"key-acme-1234":   {Tenant: "acme"},
	"key-globex-1234": {Tenant: "globex"},
	"key-acme-read":   {Tenant: "acme", ReadOnly: true},
}

func submit(t *testing.T, c cortexv1connect.GatewayServiceClient, req *cortexv1.SubmitJobRequest) string {
	t.Helper()
	res, err := c.SubmitJob(context.Background(), req)
	if err != nil {
		t.Fatalf("submit %v: %v", req, err)
	}
	return res.GetJobId()
}

func TestNewRefusesToStartWithoutKeys(t *testing.T) {
	r, _ := routing.NewRouter(nil)
	_, err := gateway.New(nil, nil, gateway.Options{Router: r}, testLog)
	if err == nil || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("New without keys: %v, want a refusal that mentions --insecure", err)
	}
}

func TestParseKeys(t *testing.T) {
	got, err := gateway.ParseKeys([]string{"s3cr3t-key:acme", "r3ad-only-key:acme:read", "adm1n-key:ops:admin"})
	if err != nil || got["s3cr3t-key"] != (gateway.Principal{Tenant: "acme"}) || !got["r3ad-only-key"].ReadOnly || !got["adm1n-key"].Admin {
		t.Fatalf("ParseKeys = %v, %v", got, err)
	}
	if _, err := gateway.ParseKeys([]string{"same-key-1:acme", "same-key-1:globex"}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("ParseKeys with one key for two tenants: %v, want a refusal", err)
	}
	for _, bad := range []string{"nokey", ":acme", "short:acme", "longenough:Acme Corp", "longenough:acme:root", "a:b:c:d"} {
		if _, err := gateway.ParseKeys([]string{bad}); err == nil {
			t.Errorf("ParseKeys(%q) accepted", bad)
		}
	}
}

func TestSubmitRecordsTheJobAndPublishesAPointer(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	id := submit(t, f.client(t, "key-acme-1234"), &cortexv1.SubmitJobRequest{
		Topic: "job.echo", Prompt: "secret prompt", Labels: map[string]string{"team": "ml"},
		Priority: new(int32(7)), MaxAttempts: new(uint32(3)), Timeout: durationpb.New(90 * time.Second),
	})
	// By the time the client has the id, the job is stored in the submit
	// stream, once, named by its id and record version.
	subs := f.submits(t)
	if len(subs) != 1 {
		t.Fatalf("%d jobs in the submit stream, want 1", len(subs))
	}
	req := subs[0].req
	if req.GetJobId() != id || req.GetTenantId() != "acme" || req.GetContextPtr() != store.ContextPtr(id) ||
		req.GetPromptSize() != uint64(len("secret prompt")) || req.GetLabels()["team"] != "ml" ||
		req.GetPriority() != 7 || req.GetMaxAttempts() != 3 || req.GetTimeout().AsDuration() != 90*time.Second || req.GetAttempt() != 1 {
		t.Fatalf("published %v", req)
	}
	if subs[0].msgID != id+":1" {
		t.Fatalf("message id %q, want %q (job id and record version)", subs[0].msgID, id+":1")
	}
	// A pointer, not the prompt: it names the key that holds the input.
	if got, err := f.mr.Get(redisKey(t, req.GetContextPtr())); err != nil || got != "secret prompt" {
		t.Fatalf("the context pointer's key holds %q (%v)", got, err)
	}
	if got, err := f.st.Input(context.Background(), id); err != nil || got != "secret prompt" {
		t.Fatalf("stored input %q, %v", got, err)
	}
	j, err := f.st.Get(context.Background(), id)
	if err != nil || j.State != store.Pending || j.Priority != 7 || j.MaxAttempts != 3 || j.Timeout != 90*time.Second {
		t.Fatalf("recorded %+v, %v", j, err)
	}
	eventually(t, "PENDING event", func() bool { return len(f.tap.on(bus.SubjectJobEvent)) == 1 })
	if ev := bus.EventJobs(f.tap.on(bus.SubjectJobEvent)[0]); len(ev) != 1 || ev[0].GetState() != cortexv1.JobState_JOB_STATE_PENDING || ev[0].GetJobId() != id {
		t.Fatalf("event %v", ev)
	}
}

func TestAuthentication(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	for _, key := range []string{"", "wrong-key", "key-acme-1234-but-longer"} {
		_, err := f.client(t, key).SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo"})
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("key %q: err = %v, want Unauthenticated", key, err)
		}
	}
	id := submit(t, f.client(t, "key-acme-1234"), &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	ro := f.client(t, "key-acme-read")
	if _, err := ro.GetJob(context.Background(), &cortexv1.GetJobRequest{JobId: id}); err != nil {
		t.Errorf("read-only key reading a job: %v", err)
	}
	_, err := ro.SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("read-only key submitting: %v, want PermissionDenied", err)
	}
	_, err = ro.CancelJob(context.Background(), &cortexv1.CancelJobRequest{JobId: id})
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("read-only key cancelling: %v, want PermissionDenied", err)
	}
	// A second authorised submit marks the end: the stream keeps the order
	// the gateway stored jobs in, so anything the refused calls sent would
	// be before it.
	last := submit(t, f.client(t, "key-acme-1234"), &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	if got := f.submitted(t); !slices.Equal(got, []string{id, last}) {
		t.Errorf("submits published %v, want only the authorised ones %v", got, []string{id, last})
	}
}

func TestTenantSeesOnlyItsJobs(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	acme, globex := f.client(t, "key-acme-1234"), f.client(t, "key-globex-1234")
	id := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"})
	if _, err := acme.GetJob(ctx, &cortexv1.GetJobRequest{JobId: id}); err != nil {
		t.Fatalf("owner reading its job: %v", err)
	}
	calls := map[string]func() error{
		"GetJob":    func() error { _, err := globex.GetJob(ctx, &cortexv1.GetJobRequest{JobId: id}); return err },
		"GetResult": func() error { _, err := globex.GetResult(ctx, &cortexv1.GetResultRequest{JobId: id}); return err },
		"CancelJob": func() error { _, err := globex.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: id}); return err },
		"WatchJob": func() error {
			s, err := globex.WatchJob(ctx, &cortexv1.WatchJobRequest{JobId: id})
			if err != nil {
				return err
			}
			_, err = s.Receive()
			return err
		},
	}
	for name, call := range calls {
		if err := call(); connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("another tenant's %s: %v, want NotFound", name, err)
		}
	}
	list, err := globex.ListJobs(ctx, &cortexv1.ListJobsRequest{})
	if err != nil || len(list.GetJobs()) != 0 {
		t.Errorf("another tenant's list: %v, %v", list, err)
	}
	if j, _ := f.st.Get(ctx, id); j.State != store.Pending {
		t.Errorf("another tenant's cancel changed the job to %s", j.State)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys, MaxPromptBytes: 16})
	c := f.client(t, "key-acme-1234")
	manyLabels := map[string]string{}
	for i := range 33 {
		manyLabels[strings.Repeat("k", i+1)] = "v"
	}
	for name, tc := range map[string]struct {
		req  *cortexv1.SubmitJobRequest
		code connect.Code
		says string
	}{
		"empty topic":       {&cortexv1.SubmitJobRequest{}, connect.CodeInvalidArgument, "not valid"},
		"bad topic":         {&cortexv1.SubmitJobRequest{Topic: "Job Echo"}, connect.CodeInvalidArgument, "e.g. job.echo"},
		"wildcard topic":    {&cortexv1.SubmitJobRequest{Topic: "job.>"}, connect.CodeInvalidArgument, "not valid"},
		"unroutable topic":  {&cortexv1.SubmitJobRequest{Topic: "job.nope"}, connect.CodeInvalidArgument, "routable topics: job.echo"},
		"prompt too big":    {&cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: strings.Repeat("x", 17)}, connect.CodeInvalidArgument, "16 byte limit"},
		"payload too big":   {&cortexv1.SubmitJobRequest{Topic: "job.echo", Payload: make([]byte, 17)}, connect.CodeInvalidArgument, "16 byte limit"},
		"prompt and bytes":  {&cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "a", Payload: []byte("b")}, connect.CodeInvalidArgument, "not both"},
		"too many labels":   {&cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: manyLabels}, connect.CodeInvalidArgument, "at most 32"},
		"empty label key":   {&cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: map[string]string{"": "v"}}, connect.CodeInvalidArgument, "label"},
		"huge label":        {&cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: map[string]string{"k": strings.Repeat("v", 257)}}, connect.CodeInvalidArgument, "label"},
		"priority":          {&cortexv1.SubmitJobRequest{Topic: "job.echo", Priority: new(int32(10))}, connect.CodeInvalidArgument, "0-9"},
		"zero attempts":     {&cortexv1.SubmitJobRequest{Topic: "job.echo", MaxAttempts: new(uint32(0))}, connect.CodeInvalidArgument, "1-10"},
		"too many attempts": {&cortexv1.SubmitJobRequest{Topic: "job.echo", MaxAttempts: new(uint32(11))}, connect.CodeInvalidArgument, "1-10"},
		"negative timeout":  {&cortexv1.SubmitJobRequest{Topic: "job.echo", Timeout: durationpb.New(-time.Second)}, connect.CodeInvalidArgument, "timeout"},
		"long timeout":      {&cortexv1.SubmitJobRequest{Topic: "job.echo", Timeout: durationpb.New(25 * time.Hour)}, connect.CodeInvalidArgument, "timeout"},
		"long idem key":     {&cortexv1.SubmitJobRequest{Topic: "job.echo", IdempotencyKey: strings.Repeat("k", 257)}, connect.CodeInvalidArgument, "idempotency key"},
	} {
		_, err := c.SubmitJob(context.Background(), tc.req)
		if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: err = %v, want %v saying %q", name, err, tc.code, tc.says)
		}
	}
	for _, id := range []string{"", "not-a-uuid", strings.Repeat("9", 500), "01A20735-CD75-7D56-A260-013070573C1B"} {
		_, err := c.GetJob(context.Background(), &cortexv1.GetJobRequest{JobId: id})
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("GetJob(%.20q): err = %v, want InvalidArgument", id, err)
		}
	}
	for name, req := range map[string]*cortexv1.ListJobsRequest{
		"page size":  {PageSize: 501},
		"page token": {PageToken: "!!"},
		"state":      {States: []cortexv1.JobState{42}},
		"topic":      {Topic: "job..x"},
	} {
		if _, err := c.ListJobs(context.Background(), req); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("ListJobs with a bad %s: err = %v, want InvalidArgument", name, err)
		}
	}
	_, err := c.GetJob(context.Background(), &cortexv1.GetJobRequest{JobId: "01a20735-cd75-7d56-a260-013070573c1b"})
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("unknown job: err = %v, want NotFound", err)
	}
	if n := len(f.submits(t)); n != 0 {
		t.Errorf("%d jobs handed on for bad requests", n)
	}
	if keys := f.mr.Keys(); len(keys) != 0 {
		t.Errorf("bad requests wrote to Redis: %v", keys)
	}
}

func TestIdempotencyKey(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	acme := f.client(t, "key-acme-1234")
	req := &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "once", IdempotencyKey: "order-42"}
	first, err := acme.SubmitJob(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := acme.SubmitJob(ctx, req)
	if err != nil || again.GetJobId() != first.GetJobId() || !again.GetDeduplicated() || first.GetDeduplicated() {
		t.Fatalf("resubmit = %v, %v; want job %s, deduplicated", again, err, first.GetJobId())
	}
	_, err = acme.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "twice", IdempotencyKey: "order-42"})
	if connect.CodeOf(err) != connect.CodeAlreadyExists || !strings.Contains(err.Error(), first.GetJobId()) {
		t.Fatalf("same key, other request: %v, want AlreadyExists naming %s", err, first.GetJobId())
	}
	other := submit(t, f.client(t, "key-globex-1234"), req)
	if other == first.GetJobId() {
		t.Fatal("another tenant's key matched acme's job")
	}
	// The deduplicated submit was not handed on a second time.
	if got := f.submitted(t); !slices.Equal(got, []string{first.GetJobId(), other}) {
		t.Fatalf("handed on %v, want %v", got, []string{first.GetJobId(), other})
	}
	list, err := acme.ListJobs(ctx, &cortexv1.ListJobsRequest{})
	if err != nil || len(list.GetJobs()) != 1 {
		t.Fatalf("acme has %d jobs (%v), want 1", len(list.GetJobs()), err)
	}
}

func TestGetJobAndResult(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	c := f.client(t, "key-acme-1234")
	id := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "hi"})
	_, err := c.GetResult(ctx, &cortexv1.GetResultRequest{JobId: id})
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "jobs watch") {
		t.Fatalf("result of a pending job: %v, want FailedPrecondition pointing at jobs watch", err)
	}
	f.move(t, id, store.Change{To: store.Dispatched, Pool: "echo", Safety: &store.Verdict{Decision: "ALLOW", Rule: "allow-jobs", Policy: "builtin"}})
	if _, _, err := f.st.Start(ctx, id, 1, "echo-1", false, time.Minute, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Finish(ctx, id, 1, "echo-1", "hi", store.Usage{}, time.Now()); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetJob(ctx, &cortexv1.GetJobRequest{JobId: id})
	if err != nil {
		t.Fatal(err)
	}
	j := got.GetJob()
	var states []cortexv1.JobState
	for _, tr := range j.GetTransitions() {
		states = append(states, tr.GetState())
	}
	want := []cortexv1.JobState{cortexv1.JobState_JOB_STATE_PENDING, cortexv1.JobState_JOB_STATE_DISPATCHED, cortexv1.JobState_JOB_STATE_RUNNING, cortexv1.JobState_JOB_STATE_COMPLETED}
	if !slices.Equal(states, want) || j.GetWorkerId() != "echo-1" || j.GetPool() != "echo" || j.GetSafety().GetRule() != "allow-jobs" ||
		j.GetSafety().GetDecision() != cortexv1.Decision_DECISION_ALLOW || j.GetResultSize() != 2 || j.GetVersion() != 4 {
		t.Fatalf("job %v (transitions %v)", j, states)
	}
	res, err := c.GetResult(ctx, &cortexv1.GetResultRequest{JobId: id})
	if err != nil || res.GetText() != "hi" {
		t.Fatalf("result = %v, %v", res, err)
	}
	bin := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo", Payload: []byte{0xff, 0}})
	f.move(t, bin, store.Change{To: store.Dispatched})
	if _, _, err := f.st.Start(ctx, bin, 1, "echo-1", false, time.Minute, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Finish(ctx, bin, 1, "echo-1", "\xff\x00", store.Usage{}, time.Now()); err != nil {
		t.Fatal(err)
	}
	res, err = c.GetResult(ctx, &cortexv1.GetResultRequest{JobId: bin})
	if err != nil || string(res.GetData()) != "\xff\x00" || res.GetText() != "" {
		t.Fatalf("binary result = %v, %v", res, err)
	}
}

func TestListJobs(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys, Router: mustRouter(t, map[string]string{"job.echo": "echo", "job.sleep": "echo"})})
	ctx := context.Background()
	c := f.client(t, "key-acme-1234")
	var ids []string
	for i := range 7 {
		topic, team := "job.echo", "ml"
		if i%2 == 1 {
			topic, team = "job.sleep", "web"
		}
		ids = append(ids, submit(t, c, &cortexv1.SubmitJobRequest{Topic: topic, Prompt: "1s", Labels: map[string]string{"team": team}}))
	}
	f.move(t, ids[0], store.Change{To: store.Cancelled})
	var got []string
	token := ""
	for page := 0; ; page++ {
		res, err := c.ListJobs(ctx, &cortexv1.ListJobsRequest{PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.GetJobs()) > 3 || page > 3 {
			t.Fatalf("page %d has %d jobs", page, len(res.GetJobs()))
		}
		for _, j := range res.GetJobs() {
			got = append(got, j.GetJobId())
		}
		if token = res.GetNextPageToken(); token == "" {
			break
		}
	}
	want := slices.Clone(ids)
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		t.Fatalf("paged list %v, want newest first %v", got, want)
	}
	count := func(req *cortexv1.ListJobsRequest) int {
		res, err := c.ListJobs(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return len(res.GetJobs())
	}
	for name, tc := range map[string]struct {
		req  *cortexv1.ListJobsRequest
		want int
	}{
		"topic":     {&cortexv1.ListJobsRequest{Topic: "job.sleep"}, 3},
		"prefix":    {&cortexv1.ListJobsRequest{Topic: "job.*"}, 7},
		"label":     {&cortexv1.ListJobsRequest{Labels: map[string]string{"team": "ml"}}, 4},
		"state":     {&cortexv1.ListJobsRequest{States: []cortexv1.JobState{cortexv1.JobState_JOB_STATE_CANCELLED}}, 1},
		"two":       {&cortexv1.ListJobsRequest{States: []cortexv1.JobState{cortexv1.JobState_JOB_STATE_CANCELLED, cortexv1.JobState_JOB_STATE_PENDING}}, 7},
		"combined":  {&cortexv1.ListJobsRequest{Topic: "job.echo", States: []cortexv1.JobState{cortexv1.JobState_JOB_STATE_PENDING}}, 3},
		"no match":  {&cortexv1.ListJobsRequest{Labels: map[string]string{"team": "none"}}, 0},
		"page size": {&cortexv1.ListJobsRequest{PageSize: 2}, 2},
	} {
		if n := count(tc.req); n != tc.want {
			t.Errorf("%s filter: %d jobs, want %d", name, n, tc.want)
		}
	}
}

func mustRouter(t *testing.T, routes map[string]string) *routing.Router {
	t.Helper()
	r, err := routing.NewRouter(routes)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCancelJob(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	c := f.client(t, "key-acme-1234")

	pending := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	res, err := c.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: pending, Reason: "changed my mind"})
	if err != nil || res.GetJob().GetState() != cortexv1.JobState_JOB_STATE_CANCELLED || res.GetJob().GetReason() != "changed my mind" {
		t.Fatalf("cancel pending = %v, %v", res, err)
	}
	if _, err := f.st.Transition(ctx, pending, store.Change{To: store.Dispatched}, time.Now()); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a cancelled job could still be dispatched: %v", err)
	}
	if _, err := c.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: pending}); err != nil {
		t.Fatalf("cancelling again: %v, want a no-op", err)
	}
	if n := len(f.tap.on(bus.SubjectJobCancel)); n != 0 {
		t.Fatalf("a pending job's cancel asked %d workers to stop", n)
	}

	running := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	f.move(t, running, store.Change{To: store.Dispatched})
	if _, _, err := f.st.Start(ctx, running, 1, "echo-1", false, time.Minute, time.Now()); err != nil {
		t.Fatal(err)
	}
	res, err = c.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: running})
	if err != nil || res.GetJob().GetState() != cortexv1.JobState_JOB_STATE_CANCELLED || res.GetJob().GetReason() != "cancelled by the client" {
		t.Fatalf("cancel running = %v, %v", res, err)
	}
	eventually(t, "worker asked to stop", func() bool { return len(f.tap.on(bus.SubjectJobCancel)) == 1 })
	if got := f.tap.on(bus.SubjectJobCancel)[0].GetJobCancel().GetJobId(); got != running {
		t.Fatalf("cancel sent for %s, want %s", got, running)
	}

	done := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	f.move(t, done, store.Change{To: store.Dispatched})
	f.move(t, done, store.Change{To: store.Completed})
	_, err = c.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: done})
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "COMPLETED") {
		t.Fatalf("cancel completed: %v, want FailedPrecondition naming COMPLETED", err)
	}
}

func TestWatchJobFollowsEventsToTheEnd(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := f.client(t, "key-acme-1234")
	id := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	stream, err := c.WatchJob(ctx, &cortexv1.WatchJobRequest{JobId: id})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Receive()
	if err != nil || first.GetJob().GetState() != cortexv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("first message %v, %v", first, err)
	}
	f.move(t, id, store.Change{To: store.Dispatched})
	f.move(t, id, store.Change{To: store.Failed, Reason: "boom"})
	var states []cortexv1.JobState
	for {
		msg, err := stream.Receive()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("stream ended with %v", err)
			}
			break
		}
		states = append(states, msg.GetJob().GetState())
	}
	if len(states) == 0 || states[len(states)-1] != cortexv1.JobState_JOB_STATE_FAILED {
		t.Fatalf("watched %v, want to end at FAILED", states)
	}
}

func TestWatchJobSeesChangesWithoutEvents(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := f.client(t, "key-acme-1234")
	id := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	stream, err := c.WatchJob(ctx, &cortexv1.WatchJobRequest{JobId: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Receive(); err != nil {
		t.Fatal(err)
	}
	// A lost event: the change reaches the store only.
	if _, err := f.st.Transition(ctx, id, store.Change{To: store.Cancelled}, time.Now()); err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Receive()
	if err != nil || msg.GetJob().GetState() != cortexv1.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("after a lost event: %v, %v", msg, err)
	}
}

func TestStreamEventsFilters(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acme := f.client(t, "key-acme-1234")
	stream, err := acme.StreamEvents(ctx, &cortexv1.StreamEventsRequest{
		Topic: "job.*", States: []cortexv1.JobState{cortexv1.JobState_JOB_STATE_PENDING}, Labels: map[string]string{"team": "ml"},
	})
	if err != nil {
		t.Fatal(err)
	}
	submit(t, f.client(t, "key-globex-1234"), &cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: map[string]string{"team": "ml"}})
	submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: map[string]string{"team": "web"}})
	other := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: map[string]string{"team": "ml"}})
	f.move(t, other, store.Change{To: store.Cancelled})
	want := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: map[string]string{"team": "ml", "x": "y"}})
	var got []string
	for len(got) < 2 {
		msg, err := stream.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if msg.GetJob().GetTenantId() != "acme" || msg.GetJob().GetState() != cortexv1.JobState_JOB_STATE_PENDING {
			t.Fatalf("filtered stream delivered %v", msg.GetJob())
		}
		got = append(got, msg.GetJob().GetJobId())
	}
	if !slices.Equal(got, []string{other, want}) {
		t.Fatalf("stream delivered %v, want %v", got, []string{other, want})
	}
	bad, err := acme.StreamEvents(ctx, &cortexv1.StreamEventsRequest{Topic: "not a topic"})
	if err == nil {
		_, err = bad.Receive()
	}
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("bad filter: %v, want InvalidArgument", err)
	}
}

// A stream with a batch window sends the events of each window in one
// message, in order; a window out of range is refused.
func TestStreamEventsBatchWindow(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acme := f.client(t, "key-acme-1234")
	// A window far longer than the submits below take: they share a message.
	stream, err := acme.StreamEvents(ctx, &cortexv1.StreamEventsRequest{
		States: []cortexv1.JobState{cortexv1.JobState_JOB_STATE_PENDING}, BatchWindow: durationpb.New(3 * time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for range 5 {
		want = append(want, submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo"}))
	}
	var got []string
	messages := 0
	for len(got) < len(want) {
		msg, err := stream.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if msg.GetJob() != nil {
			t.Fatalf("a batched stream sent a lone job: %v", msg)
		}
		messages++
		for _, j := range msg.GetJobs() {
			got = append(got, j.GetJobId())
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("stream delivered %v, want %v", got, want)
	}
	if messages != 1 {
		t.Errorf("5 events within one window came in %d messages, want 1", messages)
	}
	for _, d := range []time.Duration{-time.Second, time.Minute} {
		bad, err := acme.StreamEvents(ctx, &cortexv1.StreamEventsRequest{BatchWindow: durationpb.New(d)})
		if err == nil {
			_, err = bad.Receive()
		}
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("batch window %s: %v, want InvalidArgument", d, err)
		}
	}
}

// A stream that asks for output gets the pieces of the caller's running
// jobs of its topic filter, and nobody else's.
func TestStreamEventsOutput(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acme := f.client(t, "key-acme-1234")
	stream, err := acme.StreamEvents(ctx, &cortexv1.StreamEventsRequest{Topic: "job.echo", States: []cortexv1.JobState{cortexv1.JobState_JOB_STATE_CANCELLED}, Output: true})
	if err != nil {
		t.Fatal(err)
	}
	piece := func(id, tenant, topic, text string) {
		t.Helper()
		err := f.other.Publish(bus.JobOutputSubject(id), &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobOutput{JobOutput: &cortexv1.JobOutput{
			JobId: id, Attempt: 1, Seq: 1, Text: text, TenantId: tenant, Topic: topic,
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The stream is open once its headers came: wait for the first
	// message, an event, before publishing pieces.
	id := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	f.move(t, id, store.Change{To: store.Cancelled})
	if msg, err := stream.Receive(); err != nil || msg.GetJob().GetJobId() != id {
		t.Fatalf("first message: %v, %v", msg, err)
	}
	piece("j-globex", "globex", "job.echo", "not yours")
	piece("j-other-topic", "acme", "job.sleep", "not this topic")
	piece(id, "acme", "job.echo", "yours")
	msg, err := stream.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if o := msg.GetOutput(); o.GetJobId() != id || o.GetText() != "yours" || msg.GetJob() != nil {
		t.Fatalf("stream sent %v, want only acme's piece of job.echo output", msg)
	}
}

// With the bus down, a submit is still accepted: the job is recorded
// PENDING with a deadline, for the reconciler to hand on, and the client
// gets its id. A retry (same idempotency key) finds that job; nothing is
// lost and nothing is made twice.
func TestBusDownKeepsTheSubmitPending(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	f.conn.Close()
	c := f.client(t, "key-acme-1234")
	req := &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "keep me", IdempotencyKey: "order-7"}
	before := time.Now()
	res, err := c.SubmitJob(ctx, req)
	if err != nil || res.GetJobId() == "" || res.GetState() != cortexv1.JobState_JOB_STATE_PENDING || res.GetDeduplicated() {
		t.Fatalf("submit with the bus down: %v, %v; want the new job's id, PENDING", res, err)
	}
	id := res.GetJobId()
	jobs, _, err := f.st.List(ctx, store.Query{Tenant: "acme", Limit: 10})
	if err != nil || len(jobs) != 1 || jobs[0].ID != id || jobs[0].State != store.Pending {
		t.Fatalf("after a failed hand-off the store has %v, %v; want job %s PENDING", jobs, err, id)
	}
	if in, err := f.st.Input(ctx, id); err != nil || in != "keep me" {
		t.Fatalf("stored input %q, %v", in, err)
	}
	if n := len(f.submits(t)); n != 0 {
		t.Fatalf("%d jobs in the submit stream, from a gateway whose bus is down", n)
	}
	// Its deadline is a redrive interval after it was recorded.
	if due := dueIDs(t, f.st, before); slices.Contains(due, id) {
		t.Fatalf("the job is due at once (%v); want it due a redrive interval later", due)
	}
	if due := dueIDs(t, f.st, time.Now().Add(store.DefaultRedrive)); !slices.Contains(due, id) {
		t.Fatalf("due after a redrive interval: %v, want %s there for the reconciler", due, id)
	}
	again, err := c.SubmitJob(ctx, req)
	if err != nil || again.GetJobId() != id || !again.GetDeduplicated() || again.GetState() != cortexv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("retry with the same key: %v, %v; want job %s, deduplicated, PENDING", again, err, id)
	}
	if jobs, _, err := f.st.List(ctx, store.Query{Tenant: "acme", Limit: 10}); err != nil || len(jobs) != 1 {
		t.Fatalf("after the retry the store has %d jobs (%v), want 1", len(jobs), err)
	}
}

// dueIDs is the ids of the jobs past their deadline at now.
func dueIDs(t *testing.T, st *store.Store, now time.Time) []string {
	t.Helper()
	jobs, err := st.Due(context.Background(), now, 100)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.ID)
	}
	return ids
}

func TestInsecureModeUsesDefaultTenant(t *testing.T) {
	f := newFixture(t, gateway.Options{Insecure: true})
	submit(t, f.client(t, ""), &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	subs := f.submits(t)
	if len(subs) != 1 {
		t.Fatalf("%d jobs handed on, want 1", len(subs))
	}
	if got := subs[0].req.GetTenantId(); got != gateway.InsecureTenant {
		t.Fatalf("tenant %q, want %q", got, gateway.InsecureTenant)
	}
}

func TestReflectionListsTheServiceWithoutAKey(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	hc := &http.Client{Transport: &http.Transport{Protocols: h2c()}}
	rc := grpcreflect.NewClient(connect.NewClient(connecthttp.NewTransport(hc, f.url)))
	stream := rc.NewStream(context.Background())
	defer func() { _ = stream.Close() }()
	names, err := stream.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(names, "cortex.v1.GatewayService") {
		t.Fatalf("reflection lists %v", names)
	}
}

func h2c() *http.Protocols {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return p
}

// acmeStream opens a StreamEvents of tenant acme for the test, for 10 s
// at most; ctx is the stream's.
func acmeStream(t *testing.T, f *fixture, req *cortexv1.StreamEventsRequest) (context.Context, cortexv1connect.GatewayServiceStreamEventsClientStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	stream, err := f.client(t, "key-acme-1234").StreamEvents(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, stream
}

// Events of one job reach a stream in the order of their versions: one
// that arrives after a newer one (events of several components cross on
// the bus) is skipped.
func TestStreamEventsKeepEachJobsOrder(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx, stream := acmeStream(t, f, &cortexv1.StreamEventsRequest{})
	// A stream of PENDING events orders them by the versions of every
	// change all the same: j-1's late PENDING is older than its DISPATCHED.
	_, pending := acmeStream(t, f, &cortexv1.StreamEventsRequest{States: []cortexv1.JobState{cortexv1.JobState_JOB_STATE_PENDING}})
	event := func(id string, state cortexv1.JobState, version uint64) {
		t.Helper()
		j := &cortexv1.Job{JobId: id, TenantId: "acme", Topic: "job.echo", State: state, Attempt: 1, Version: version}
		if err := f.other.PublishJobEvent("trace-"+id, j); err != nil {
			t.Fatal(err)
		}
		if err := f.other.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	event("j-1", cortexv1.JobState_JOB_STATE_DISPATCHED, 2)
	event("j-1", cortexv1.JobState_JOB_STATE_COMPLETED, 3)
	event("j-1", cortexv1.JobState_JOB_STATE_PENDING, 1) // late
	event("j-2", cortexv1.JobState_JOB_STATE_PENDING, 1) // another job's first
	var got []string
	for len(got) < 3 {
		msg, err := stream.Receive()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %s", msg.GetJob().GetJobId(), msg.GetJob().GetState()))
	}
	want := []string{"j-1 JOB_STATE_DISPATCHED", "j-1 JOB_STATE_COMPLETED", "j-2 JOB_STATE_PENDING"}
	if !slices.Equal(got, want) {
		t.Fatalf("stream delivered %v, want %v", got, want)
	}
	msg, err := pending.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprintf("%s %s", msg.GetJob().GetJobId(), msg.GetJob().GetState()), "j-2 JOB_STATE_PENDING"; got != want {
		t.Fatalf("the PENDING stream delivered %q first, want %q", got, want)
	}
}

// A packet whose event comes in two pieces (another tenant's job in the
// first, the caller's in the second), which protobuf merges and no
// publisher sends, reaches no stream: the caller never sees the other
// tenant's job, whatever filter the heads pass.
func TestStreamEventsRefuseAnEventInPieces(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx, stream := acmeStream(t, f, &cortexv1.StreamEventsRequest{})
	piece := func(j *cortexv1.Job) []byte {
		b, err := proto.Marshal(&cortexv1.JobEvent{Jobs: []*cortexv1.Job{j}})
		if err != nil {
			t.Fatal(err)
		}
		return protowire.AppendBytes(protowire.AppendTag(nil, 15, protowire.BytesType), b)
	}
	data := protowire.AppendVarint(protowire.AppendTag(nil, 4, protowire.VarintType), uint64(bus.ProtocolVersion))
	data = append(data, piece(&cortexv1.Job{JobId: "theirs", TenantId: "globex", Topic: "job.echo", Reason: "globex's secret"})...)
	data = append(data, piece(&cortexv1.Job{JobId: "mine", TenantId: "acme", Topic: "job.echo"})...)
	if err := f.other.NATS().Publish(bus.SubjectJobEvent, data); err != nil {
		t.Fatal(err)
	}
	// Then a well-formed event: the stream's first message must be it.
	if err := f.other.PublishJobEvent("trace-after", &cortexv1.Job{JobId: "after", TenantId: "acme", Topic: "job.echo", State: cortexv1.JobState_JOB_STATE_PENDING, Version: 1}); err != nil {
		t.Fatal(err)
	}
	if err := f.other.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if id := msg.GetJob().GetJobId(); id != "after" {
		t.Fatalf("the stream's first event is of job %q (%v), want the well-formed one", id, msg.GetJob())
	}
}

// backBus is the gateway's bus connection with its reconnection made by
// the test.
type backBus struct {
	*bus.Conn
	mu   sync.Mutex
	back []func()
}

func (b *backBus) OnReconnect(fn func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.back = append(b.back, fn)
}

func (b *backBus) reconnect() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, fn := range b.back {
		fn()
	}
}

// When the gateway's bus connection comes back after an outage, every
// event stream is told at once (bus_gap, alone), since changes made
// meanwhile never reached it; then events flow as before.
func TestStreamsAreToldOfABusGap(t *testing.T) {
	bb := &backBus{}
	f := newFixtureWith(t, gateway.Options{Keys: keys}, setup{bus: func(c *bus.Conn) gateway.Bus { bb.Conn = c; return bb }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acme := f.client(t, "key-acme-1234")
	stream, err := acme.StreamEvents(ctx, &cortexv1.StreamEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	decisions, err := acme.StreamDecisions(ctx, &cortexv1.StreamDecisionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// A first event proves the stream is listening.
	first := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	if msg, err := stream.Receive(); err != nil || msg.GetJob().GetJobId() != first || msg.GetBusGap() {
		t.Fatalf("first message: %v, %v", msg, err)
	}
	ev := &cortexv1.SafetyDecisionEvent{JobId: first, TenantId: "acme", Topic: "job.echo",
		Verdict: &cortexv1.SafetyVerdict{Decision: cortexv1.Decision_DECISION_ALLOW, Rule: "allow-jobs"}}
	if err := f.other.Publish(bus.SubjectSafetyDecision, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_SafetyDecision{SafetyDecision: ev}}); err != nil {
		t.Fatal(err)
	}
	if msg, err := decisions.Receive(); err != nil || msg.GetEvent().GetJobId() != first || msg.GetBusGap() {
		t.Fatalf("first decision: %v, %v", msg, err)
	}
	bb.reconnect()
	if msg, err := stream.Receive(); err != nil || !msg.GetBusGap() || msg.GetJob() != nil || len(msg.GetJobs()) != 0 {
		t.Fatalf("after the bus came back: %v, %v, want bus_gap alone", msg, err)
	}
	if msg, err := decisions.Receive(); err != nil || !msg.GetBusGap() {
		t.Fatalf("decisions after the bus came back: %v, %v, want bus_gap", msg, err)
	}
	next := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	if msg, err := stream.Receive(); err != nil || msg.GetJob().GetJobId() != next || msg.GetBusGap() {
		t.Fatalf("the next event: %v, %v", msg, err)
	}
}

// The Authorization header's scheme is read in any case, as HTTP's are, and
// spaces around the key do not matter; a header that is not "Bearer KEY"
// is refused saying so, not as a missing key.
func TestAuthorizationHeaderForms(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	list := func(header string) (int, string) {
		code, out := f.postJSON(t, "ListJobs", `{}`, map[string]string{"Content-Type": "application/json", "Authorization": header})
		return code, fmt.Sprint(out["message"])
	}
	for _, header := range []string{"Bearer key-acme-1234", "bearer key-acme-1234", "BEARER   key-acme-1234  "} {
		if code, msg := list(header); code != http.StatusOK {
			t.Errorf("Authorization %q: %d %s, want 200", header, code, msg)
		}
	}
	for header, says := range map[string]string{
		"":                       "missing API key",
		"key-acme-1234":          "not 'Bearer YOUR_KEY'",
		"Basic a2V5OnNlY3JldA==": "not 'Bearer YOUR_KEY'",
		"Bearer ":                "missing API key",
		"Bearer wrong-key":       "API key not recognised",
	} {
		if code, msg := list(header); code != http.StatusUnauthorized || !strings.Contains(msg, says) {
			t.Errorf("Authorization %q: %d %q, want 401 saying %q", header, code, msg, says)
		}
	}
}

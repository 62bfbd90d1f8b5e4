package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func TestSubmitJobsAnswersEachJob(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	c := f.client(t, "key-acme-1234")
	first := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "once", IdempotencyKey: "k-1"})
	res, err := c.SubmitJobs(ctx, &cortexv1.SubmitJobsRequest{Jobs: []*cortexv1.SubmitJobRequest{
		{Topic: "job.echo", Prompt: "a", Labels: map[string]string{"n": "1"}},
		{Topic: "Bad Topic"},
		{Topic: "job.echo", Prompt: "once", IdempotencyKey: "k-1"},
		{Topic: "job.echo", Prompt: "other", IdempotencyKey: "k-1"},
		{Topic: "job.nope"},
		{Topic: "job.echo", Prompt: "b"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := res.GetResults()
	if len(r) != 6 {
		t.Fatalf("%d results for 6 jobs", len(r))
	}
	for i, want := range []struct{ code, says string }{
		{"", ""}, {"invalid_argument", "not valid"}, {"", ""}, {"already_exists", first}, {"invalid_argument", "routable topics"}, {"", ""},
	} {
		if r[i].GetErrorCode() != want.code || !strings.Contains(r[i].GetError(), want.says) {
			t.Errorf("job %d: %v, want code %q saying %q", i, r[i], want.code, want.says)
		}
	}
	if r[2].GetJobId() != first || !r[2].GetDeduplicated() {
		t.Errorf("the repeated key: %v, want job %s deduplicated", r[2], first)
	}
	for _, i := range []int{0, 5} {
		j, err := f.st.Get(ctx, r[i].GetJobId())
		if err != nil || j.State != store.Pending || r[i].GetState() != cortexv1.JobState_JOB_STATE_PENDING {
			t.Errorf("job %d (%s) recorded %+v, %v", i, r[i].GetJobId(), j, err)
		}
	}
	// The new jobs are handed on, the deduplicated one not again.
	if got, want := f.submitted(t), []string{first, r[0].GetJobId(), r[5].GetJobId()}; !slices.Equal(got, want) {
		t.Errorf("handed on %v, want %v", got, want)
	}
}

func TestSubmitJobsRefusesABadBatch(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	huge := make([]*cortexv1.SubmitJobRequest, gateway.MaxBatch+1)
	for i := range huge {
		huge[i] = &cortexv1.SubmitJobRequest{Topic: "job.echo"}
	}
	for name, tc := range map[string]struct {
		key  string
		jobs []*cortexv1.SubmitJobRequest
		code connect.Code
	}{
		"empty":     {"key-acme-1234", nil, connect.CodeInvalidArgument},
		"too many":  {"key-acme-1234", huge, connect.CodeInvalidArgument},
		"read-only": {"key-acme-read", []*cortexv1.SubmitJobRequest{{Topic: "job.echo"}}, connect.CodePermissionDenied},
		"no key":    {"", []*cortexv1.SubmitJobRequest{{Topic: "job.echo"}}, connect.CodeUnauthenticated},
	} {
		_, err := f.client(t, tc.key).SubmitJobs(ctx, &cortexv1.SubmitJobsRequest{Jobs: tc.jobs})
		if connect.CodeOf(err) != tc.code {
			t.Errorf("%s: %v, want %v", name, err, tc.code)
		}
	}
	if keys := f.mr.Keys(); len(keys) != 0 {
		t.Errorf("refused batches wrote to Redis: %v", keys)
	}
}

func TestSubmitJobsIsOneStoreRoundTrip(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	c := f.client(t, "key-acme-1234")
	submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo"}) // loads the script
	jobs := make([]*cortexv1.SubmitJobRequest, 100)
	for i := range jobs {
		jobs[i] = &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"}
	}
	before := f.st.RoundTrips()
	if _, err := c.SubmitJobs(ctx, &cortexv1.SubmitJobsRequest{Jobs: jobs}); err != nil {
		t.Fatal(err)
	}
	if n := f.st.RoundTrips() - before; n != 1 {
		t.Fatalf("a batch of 100 took %d round trips to Redis, want 1", n)
	}
}

// A new job's PENDING event goes out before its hand-off to the
// schedulers, so no watcher can see a later change of the job (from the
// scheduler the hand-off reaches) before the job's PENDING.
func TestNewJobsAreAnnouncedBeforeTheirHandOff(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	sub, err := f.other.NATS().SubscribeSync("sys.job.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.other.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c := f.client(t, "key-acme-1234")
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if _, err := c.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "one"}); err != nil {
				t.Error(err)
			}
			batch := make([]*cortexv1.SubmitJobRequest, 20)
			for i := range batch {
				batch[i] = &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "many"}
			}
			if _, err := c.SubmitJobs(ctx, &cortexv1.SubmitJobsRequest{Jobs: batch}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	announced := map[string]bool{}
	handed := 0
	for handed < 10*21 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("after %d hand-offs: %v", handed, err)
		}
		p, err := bus.Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		switch m.Subject {
		case bus.SubjectJobEvent:
			for _, j := range bus.EventJobs(p) {
				announced[j.GetJobId()] = true
			}
		case bus.SubjectJobSubmit:
			jobs, _ := bus.JobsOf(p)
			for _, j := range jobs {
				handed++
				if !announced[j.GetJobId()] {
					t.Errorf("job %s was handed on before its PENDING event", j.GetJobId())
				}
			}
		}
	}
}

// A POST to the API in no type it reads (curl -d sends a form) is refused
// with 415 and a JSON error that says which header to send; with the
// header the same body is a job.
func TestAPIExplainsAMissingContentType(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	post := func(contentType string) (int, map[string]any) {
		return f.postJSON(t, "SubmitJob", `{"topic":"job.echo","prompt":"hi"}`, map[string]string{"Authorization": "Bearer key-acme-1234", "Content-Type": contentType})
	}
	for _, ct := range []string{"", "application/x-www-form-urlencoded", "text/plain"} {
		code, body := post(ct)
		if code != http.StatusUnsupportedMediaType || body["code"] != "invalid_argument" || !strings.Contains(fmt.Sprint(body["message"]), "Content-Type: application/json") {
			t.Errorf("Content-Type %q: %d %v, want 415 saying to send application/json", ct, code, body)
		}
	}
	if code, body := post("application/json"); code != http.StatusOK || body["jobId"] == "" {
		t.Errorf("with application/json: %d %v, want the job's id", code, body)
	}
}

// The prompt limit holds for the prompt a JSON body decodes to, not for the
// body: Python's json writes each é as the 6 bytes \u00e9, so a prompt well
// under the limit can take several times its size on the wire. What does
// not fit is refused as invalid (400), never as "try again later" (429).
func TestJSONPromptLimitIsOnTheDecodedPrompt(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	post := func(chars int) (int, map[string]any) {
		body := `{"topic":"job.echo","prompt":"` + strings.Repeat(`\u00e9`, chars) + `"}`
		return f.postJSON(t, "SubmitJob", body, map[string]string{"Authorization": "Bearer key-acme-1234", "Content-Type": "application/json"})
	}
	// 600,000 bytes of prompt in a 1.8 MB body.
	if code, out := post(300_000); code != http.StatusOK || out["jobId"] == "" {
		t.Errorf("a 600,000-byte prompt in escaped JSON: %d %v, want the job's id", code, out)
	}
	for chars, says := range map[int]string{
		600_000:   "the input is 1200000 bytes, over the 1048576 byte limit",       // a 3.6 MB body
		1_200_000: "the request is too large: inputs are limited to 1048576 bytes", // a 7.2 MB body
	} {
		if code, out := post(chars); code != http.StatusBadRequest || out["code"] != "invalid_argument" || !strings.Contains(fmt.Sprint(out["message"]), says) {
			t.Errorf("%d é in escaped JSON: %d %v, want 400 invalid_argument saying %q", chars, code, out, says)
		}
	}
}

// stalledStore is a store whose creates run out of time, as over a Redis
// that stopped answering: the create was sent and may yet be carried out.
type stalledStore struct{ gateway.Store }

var errStoreTimeout = fmt.Errorf("create: read tcp 127.0.0.1:6379: %w", os.ErrDeadlineExceeded)

func (stalledStore) CreateJob(context.Context, store.NewJob, time.Time) (string, error) {
	return "", errStoreTimeout
}

func (stalledStore) CreateJobs(_ context.Context, jobs []store.NewJob, _ time.Time) []store.Created {
	out := make([]store.Created, len(jobs))
	for i := range out {
		out[i].Err = errStoreTimeout
	}
	return out
}

// A create the store did not answer in time may still be carried out, and
// the job would then run: the refusal says so, with the job's id, rather
// than "nothing was recorded", which invites a blind retry and a second
// job.
func TestSubmitToAStalledStoreSaysTheJobMayExist(t *testing.T) {
	f := newFixtureWith(t, gateway.Options{Keys: keys}, setup{wrap: func(s gateway.Store) gateway.Store { return stalledStore{s} }})
	c := f.client(t, "key-acme-1234")
	_, err := c.SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "hi"})
	if connect.CodeOf(err) != connect.CodeUnavailable || !regexp.MustCompile(`did not answer in time: job \S+ may have been recorded`).MatchString(err.Error()) {
		t.Errorf("single submit: %v, want unavailable saying the job may have been recorded", err)
	}
	res, err := c.SubmitJobs(context.Background(), &cortexv1.SubmitJobsRequest{Jobs: []*cortexv1.SubmitJobRequest{{Topic: "job.echo", Prompt: "hi"}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := res.GetResults()[0]; r.GetErrorCode() != "unavailable" || !strings.Contains(r.GetError(), "may have been recorded") {
		t.Errorf("batched submit: %v, want unavailable saying the job may have been recorded", r)
	}
	if got := f.submitted(t); len(got) != 0 {
		t.Errorf("hand-offs %v, want none", got)
	}
}

// gatedStore holds each create until released, telling entered when one
// is waiting.
type gatedStore struct {
	gateway.Store
	entered chan struct{}
	release chan struct{}
}

func (s gatedStore) CreateJob(ctx context.Context, j store.NewJob, now time.Time) (string, error) {
	s.entered <- struct{}{}
	<-s.release
	return s.Store.CreateJob(ctx, j, now)
}

// StopAccepting refuses new jobs at once, but waits for a submit already
// taking its job in: that job is recorded and handed on, not left behind.
func TestStopAcceptingWaitsForSubmitsInProgress(t *testing.T) {
	gate := gatedStore{entered: make(chan struct{}, 1), release: make(chan struct{})}
	var g *gateway.Gateway
	f := newFixtureWith(t, gateway.Options{Keys: keys}, setup{
		wrap:   func(s gateway.Store) gateway.Store { gate.Store = s; return gate },
		gotten: func(gw *gateway.Gateway) { g = gw },
	})
	// Registered after the fixture, so run before it closes: a failure
	// leaves no create waiting.
	releaseCreates := sync.OnceFunc(func() { close(gate.release) })
	t.Cleanup(releaseCreates)
	c := f.client(t, "key-acme-1234")
	submitted := make(chan error, 1)
	var id string
	go func() {
		res, err := c.SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "in flight"})
		id = res.GetJobId()
		submitted <- err
	}()
	<-gate.entered
	stopped := make(chan struct{})
	go func() { g.StopAccepting(time.Minute); close(stopped) }()
	// Once /readyz says so, the gateway stops: a submit is refused before
	// it reaches the store.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		res, err := http.Get(f.url + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if strings.Contains(string(body), "stopping") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still says %q 10s after StopAccepting", body)
		}
	}
	_, err := c.SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "late"})
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "the gateway is stopping and takes no new jobs") {
		t.Fatalf("a submit after StopAccepting: %v, want unavailable as the gateway stops", err)
	}
	select {
	case <-stopped:
		t.Fatal("StopAccepting returned while a submit was still taking its job in")
	default:
	}
	releaseCreates()
	if err := <-submitted; err != nil {
		t.Fatalf("the submit in progress: %v, want its job taken in", err)
	}
	<-stopped
	if got := f.submitted(t); !slices.Contains(got, id) {
		t.Errorf("hand-offs %v, want the job of the submit in progress, %s", got, id)
	}
}

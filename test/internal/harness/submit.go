package harness

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// What a Submitter sends, in batches: echo jobs, whose output is their
// prompt, and, when asked (SleepEvery), some sleep jobs, whose prompt is a
// duration and whose output is "slept <duration>".
const (
	Topic      = "job.echo"
	SleepTopic = "job.sleep"
	BatchSize  = 100
)

// submitter submits jobs in paced batches, each job with its own
// idempotency key, and retries what did not get a job id with the same key
// until its deadline.
type Submitter struct {
	h        *Harness
	url      string
	name     string // the test's: the jobs' label and their keys' prefix
	runID    string
	n        int
	window   time.Duration
	deadline time.Duration
	client   *http.Client

	// SleepEvery makes every SleepEvery-th job (0: none) a job.sleep of
	// SleepFor instead of a job.echo, so that some jobs are running, not
	// only queued, when a worker is killed. Set them before Run.
	SleepEvery int
	SleepFor   time.Duration

	mu        sync.Mutex
	byKey     map[int]string   // job number -> the first job id it was answered with
	otherIDs  map[int][]string // job number -> different ids a later answer gave
	fresh     int              // next job number never sent
	retry     []retryItem
	inFlight  map[int]bool
	refused   map[int]string // job number -> permanent error
	errCodes  map[string]int // per-job error codes seen
	callErrs  map[string]int // whole-call failures
	batches   int
	dedup     int
	sendTimes []time.Duration
}

type retryItem struct {
	job int
	due time.Time
}

func NewSubmitter(h *Harness, url, name, runID string, n int, window time.Duration) *Submitter {
	return &Submitter{
		h: h, url: url + "/cortex.v1.GatewayService/SubmitJobs", name: name, runID: runID, n: n, window: window,
		deadline: window + 60*time.Second,
		client:   &http.Client{Timeout: 15 * time.Second},
		byKey:    map[int]string{}, otherIDs: map[int][]string{}, inFlight: map[int]bool{},
		refused: map[int]string{}, errCodes: map[string]int{}, callErrs: map[string]int{},
	}
}

func (s *Submitter) key(i int) string { return fmt.Sprintf("%s-%s-%05d", s.name, s.runID, i) }

// sleeps says whether job i is a job.sleep.
func (s *Submitter) sleeps(i int) bool { return s.SleepEvery > 0 && i%s.SleepEvery == s.SleepEvery-1 }

// topic is job i's topic.
func (s *Submitter) topic(i int) string {
	if s.sleeps(i) {
		return SleepTopic
	}
	return Topic
}

// prompt is job i's input.
func (s *Submitter) prompt(i int) string {
	if s.sleeps(i) {
		return s.SleepFor.String()
	}
	return "echo " + s.key(i)
}

// want is the output job i must complete with.
func (s *Submitter) want(i int) string {
	if s.sleeps(i) {
		return "slept " + s.SleepFor.String()
	}
	return s.prompt(i)
}

func (s *Submitter) request(i int) *cortexv1.SubmitJobRequest {
	return &cortexv1.SubmitJobRequest{
		Topic:          s.topic(i),
		Prompt:         s.prompt(i),
		Labels:         map[string]string{s.name: s.runID},
		IdempotencyKey: s.key(i),
	}
}

// run submits until every job has an id or the deadline passes.
func (s *Submitter) Run() {
	start := s.h.SubmitStart()
	batches := (s.n + BatchSize - 1) / BatchSize
	pace := s.window / time.Duration(batches)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for {
		if time.Since(start) > s.deadline {
			s.h.Logf("submit: deadline passed, %d jobs never got an id", s.n-s.Accepted()-len(s.refused))
			break
		}
		batch, done := s.next()
		if done {
			break
		}
		if len(batch) > 0 {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				s.send(batch)
			})
		}
		<-tick.C
	}
	wg.Wait()
}

// next takes up to BatchSize jobs: retries that are due, then new ones.
// done says there is nothing left to send or wait for.
func (s *Submitter) next() (batch []int, done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var keep []retryItem
	for _, r := range s.retry {
		if len(batch) < BatchSize && !now.Before(r.due) {
			batch = append(batch, r.job)
		} else {
			keep = append(keep, r)
		}
	}
	s.retry = keep
	for len(batch) < BatchSize && s.fresh < s.n {
		batch = append(batch, s.fresh)
		s.fresh++
	}
	for _, j := range batch {
		s.inFlight[j] = true
	}
	return batch, len(batch) == 0 && s.fresh == s.n && len(s.retry) == 0 && len(s.inFlight) == 0
}

func (s *Submitter) send(batch []int) {
	req := &cortexv1.SubmitJobsRequest{}
	for _, i := range batch {
		req.Jobs = append(req.Jobs, s.request(i))
	}
	body, err := protojson.Marshal(req)
	if err != nil {
		panic(err)
	}
	t := time.Now()
	resp, err := s.client.Post(s.url, "application/json", bytes.NewReader(body))
	var out cortexv1.SubmitJobsResponse
	if err == nil {
		var b []byte
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
		case resp.StatusCode != http.StatusOK:
			err = fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, b)
		default:
			err = protojson.Unmarshal(b, &out)
			if err == nil && len(out.GetResults()) != len(batch) {
				err = fmt.Errorf("%d results for %d jobs", len(out.GetResults()), len(batch))
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches++
	s.sendTimes = append(s.sendTimes, time.Since(t))
	due := time.Now().Add(500 * time.Millisecond)
	if err != nil {
		s.callErrs[shortErr(err)]++
		for _, i := range batch {
			delete(s.inFlight, i)
			s.retry = append(s.retry, retryItem{i, due})
		}
		return
	}
	for k, res := range out.GetResults() {
		i := batch[k]
		delete(s.inFlight, i)
		id := res.GetJobId()
		switch {
		case id != "":
			if res.GetDeduplicated() {
				s.dedup++
			}
			if prev, ok := s.byKey[i]; !ok {
				s.byKey[i] = id
			} else if prev != id && !slices.Contains(s.otherIDs[i], id) {
				s.otherIDs[i] = append(s.otherIDs[i], id)
			}
		case res.GetErrorCode() == "invalid_argument" || res.GetErrorCode() == "already_exists":
			s.errCodes[res.GetErrorCode()]++
			s.refused[i] = res.GetErrorCode() + ": " + res.GetError()
		default:
			s.errCodes[res.GetErrorCode()]++
			if _, ok := s.byKey[i]; !ok {
				s.retry = append(s.retry, retryItem{i, due})
			}
		}
	}
}

// shortErr groups call errors: the error without addresses and ports.
func shortErr(err error) string {
	msg := err.Error()
	for _, cut := range []string{"connection refused", "connection reset", "EOF", "timeout", "Client.Timeout"} {
		if strings.Contains(msg, cut) {
			return cut
		}
	}
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}

func (s *Submitter) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byKey)
}

// ids are every job id the gateway answered with, by job number.
func (s *Submitter) IDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for _, i := range slices.Sorted(maps.Keys(s.byKey)) {
		ids = append(ids, s.byKey[i])
		ids = append(ids, s.otherIDs[i]...)
	}
	return ids
}

# CortexOS developer commands. `make test` is the one to run first.
# buf and golangci-lint are pinned in tools/go.mod and built on first use.

GO        ?= go
TOOL      := $(GO) tool -modfile=$(CURDIR)/tools/go.mod
TESTFLAGS ?=
UPFLAGS   ?=
FUZZTIME  ?= 10s

.PHONY: test test-cluster chaos fuzz generate check-generate lint build up fmt-check vet completions k8s-validate

test: ## all tests, with the race detector (needs cgo: gcc)
	$(GO) test -race $(TESTFLAGS) ./...

chaos: ## the SIGKILL chaos test: separate processes, real redis-server and nats-server, 10k jobs
	bash .ci/chaos.sh

test-cluster: ## the store's tests against a real 3-node Redis Cluster (started and stopped here)
	@set -e; eval "$$(bash .ci/redis-cluster.sh start)"; \
	rc=0; $(GO) test -count=1 -run 'Cluster|OneSlot' ./internal/store/ || rc=$$?; \
	bash .ci/redis-cluster.sh stop; exit $$rc

fuzz: ## every fuzz target, FUZZTIME each (CI runs it bounded); a failed target runs once more
	@set -e; for dir in $$(git ls-files -- '*_test.go' | xargs grep -l '^func Fuzz' | xargs -n1 dirname | sort -u); do \
		for target in $$(grep -h '^func Fuzz' $$dir/*_test.go | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
			echo "fuzz ./$$dir $$target ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) ./$$dir || { \
				echo "fuzz ./$$dir $$target failed; once more (go's fuzzer can end with a bare 'context deadline exceeded'; a real finding is now in testdata/fuzz and fails again)"; \
				$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) ./$$dir; }; \
		done; \
	done

generate: ## proto/ -> pb/ (plugins are tools of the main go.mod)
	cd proto && $(TOOL) buf generate --clean

check-generate: generate ## fail if the committed pb/ differs from what proto/ generates
	@if [ -n "$$(git status --porcelain -- pb/)" ]; then \
		echo "pb/ is out of date with proto/: run 'make generate' and commit pb/." >&2; \
		git status --porcelain -- pb/ >&2; \
		exit 1; \
	fi

lint:
	$(TOOL) golangci-lint run ./...

build:
	$(GO) build -o bin/cortexctl ./cmd/cortexctl

up: ## a local cluster in one process (make up UPFLAGS="--listen 127.0.0.1:0")
	$(GO) run ./cmd/cortexctl up $(UPFLAGS)

fmt-check: ## gofmt on tracked .go files, generated pb/ excluded
	@files=$$(git ls-files -- '*.go' ':!:pb/' | xargs -r gofmt -l); \
	if [ -n "$$files" ]; then \
		echo "not gofmt'ed (run gofmt -w on them):" >&2; echo "$$files" >&2; \
		exit 1; \
	fi

vet:
	$(GO) vet ./...

completions: ## shell completions for packaging (completions/)
	mkdir -p completions
	for sh in bash zsh fish powershell; do $(GO) run ./cmd/cortexctl completion $$sh > completions/cortexctl.$$sh; done

k8s-validate: ## deploy/k8s offline: kustomize build of every overlay | kubectl-validate, policy and routing files, flag names
	bash .ci/k8s-validate.sh

# CortexOS developer commands. `make test` is the one to run first.
# buf and golangci-lint are pinned in tools/go.mod and built on first use.

GO        ?= go
TOOL      := $(GO) tool -modfile=$(CURDIR)/tools/go.mod
TESTFLAGS ?=
UPFLAGS   ?=
FUZZTIME  ?= 10s

.PHONY: test test-cluster chaos multinode fuzz generate check-generate lint build up fmt-check vet completions manpages check-completions release-check release-snapshot k8s-validate

test: ## all tests, with the race detector (needs cgo: gcc)
	$(GO) test -race $(TESTFLAGS) ./...

chaos: ## the SIGKILL chaos test: separate processes, real redis-server and nats-server, 10k jobs
	bash .ci/chaos.sh

multinode: ## the scale-out test: 3-node NATS cluster (R3 streams) + 3-master Redis Cluster, a node of each killed and brought back
	bash .ci/chaos.sh multinode

test-cluster: ## the store's and the daemons' tests against a real 3-node Redis Cluster (started and stopped here)
	@set -e; eval "$$(bash .ci/redis-cluster.sh start)"; \
	rc=0; $(GO) test -count=1 -run 'Cluster|OneSlot' ./internal/store/ ./internal/cli/daemon/ || rc=$$?; \
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

# --- release: completions, man pages, goreleaser (pinned in tools/goreleaser/go.mod) ---
# Built as the release builds cortexctl, so the two share compiled packages.
GENDOCS        := CGO_ENABLED=0 $(GO) run -trimpath ./cmd/gendocs
GORELEASER     := $(GO) tool -modfile=$(CURDIR)/tools/goreleaser/go.mod goreleaser

completions: ## shell completions (completions/), from the command tree
	$(GENDOCS) -completions completions

manpages: ## man pages (docs/man/), from the command tree
	$(GENDOCS) -man docs/man

check-completions: ## fail if completions/ or docs/man/ differ from what the command tree generates
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(GENDOCS) -completions "$$tmp/completions" -man "$$tmp/man"; \
	rc=0; diff -r completions "$$tmp/completions" >"$$tmp/diff" || rc=1; \
	diff -r docs/man "$$tmp/man" >>"$$tmp/diff" || rc=1; \
	if [ $$rc != 0 ]; then \
		echo "completions/ or docs/man/ are out of date with the command tree: run 'make completions manpages' and commit them." >&2; \
		head -n 40 "$$tmp/diff" >&2; \
		exit 1; \
	fi

release-check: ## validate .goreleaser.yaml (every target, cask, packages, images)
	$(GORELEASER) check

release-snapshot: ## a release into dist/ for this platform, not published, then checked (RELEASE_ALL=1: every platform)
	GORELEASER="$(GORELEASER)" bash .ci/release-snapshot.sh $(if $(RELEASE_ALL),--all)

k8s-validate: ## deploy/k8s offline: kustomize build of every overlay | kubectl-validate, policy and routing files, flag names
	bash .ci/k8s-validate.sh

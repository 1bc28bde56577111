# nonqueue: make test runs the whole suite (integration included) on real
# MariaDB and sshd started by the tests themselves.
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build deps test vet lint bench bench-claim soak schema demo package clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/nonqueue ./cmd/nonqueue

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1)
	$(GO) vet ./...

# golangci-lint, pinned; .golangci.yml holds the import rules (depguard) and
# the linters. Installed into bin/ on first use.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := bin/golangci-lint-$(GOLANGCI_LINT_VERSION)

$(GOLANGCI_LINT):
	mkdir -p bin
	GOBIN=$(CURDIR)/bin $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv bin/golangci-lint $@

lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...

# -p 2: each integration package starts its own topology; two at a time
# fit a 2-core machine. deps first: on a fresh machine the servers, the
# browser and Prometheus the tests use are installed, not skipped.
test: deps vet
	$(GO) test -race -p 2 -timeout 30m -count=1 ./...

# The benchmark (bench/README.md): its own sandbox (primary, 2 replicas,
# sshd), the original loop (bench/seed/seed-worker.sh) against nonqueue
# on the same topology, a table, bench/results.json, and a one-line JSON
# summary last. BENCH_QUICK=1 runs the small version (under 2 minutes).
bench: build
	$(GO) build -o bin/nqbench ./bench
	BENCH_QUICK="$(BENCH_QUICK)" bin/nqbench

# The chaos soak (bench/soak/README.md): its own sandbox, 2 replicas x 4
# instances behind a 1 ms network, requests, readers and random overlapping
# faults for SOAK_MINUTES (default 10), then a checker over the recorded
# history. The last line is a JSON object of counts; any non-zero count
# fails it.
SOAK_MINUTES ?= 10
soak: build
	bash .ci/deps soak
	$(GO) build -o bin/nqsoak ./bench/soak
	SOAK_MINUTES="$(SOAK_MINUTES)" bin/nqsoak --nonqueue bin/nonqueue

# Claim throughput at 1, 8 and 32 concurrent claimers over 10,000 due topics.
bench-claim:
	$(GO) test -run '^$$' -bench BenchmarkClaim -benchtime 10000x -count 3 ./queue/

deps:
	bash .ci/deps

# The whole system on a local sandbox: primary, 2 replicas, sshd, the
# example procedure, 4 instances per replica, a few hundred topics.
# DEMO_ARGS=--keep leaves it running; DEMO_ARGS="--tiers 2 --parallel 4" runs
# it on replicas of replicas with parallel appliers.
demo: build
	bash .ci/deps runtime
	bin/nonqueue demo $(DEMO_ARGS)

# The Debian package (dist/nonqueue_VERSION_ARCH.deb), built by nfpm at a
# pinned version run with `go run pkg@version`, so nfpm and its dependencies
# stay out of go.mod. The version comes from git (debversion.sh); the binary
# is static (CGO_ENABLED=0) so the package depends on nothing. Contents:
# cmd/nonqueue/package/nfpm.yaml. The monitoring files are shipped, so a
# missing one stops the build with its name.
NFPM_VERSION := v2.48.0
PKG_MONITORING := monitor/prometheus/alerts.yml monitor/grafana/nonqueue.json

package:
	@for f in $(PKG_MONITORING); do \
	  if [ ! -f "$$f" ]; then \
	    if git ls-files --error-unmatch "$$f" >/dev/null 2>&1; then \
	      echo "make package: $$f is tracked in git but missing from the work tree" >&2; \
	    else \
	      echo "make package: $$f is missing (and not in git): the package ships it" >&2; \
	    fi; \
	    exit 1; \
	  fi; \
	done
	rm -rf dist && mkdir -p dist
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o dist/nonqueue ./cmd/nonqueue
	v=$$(sh cmd/nonqueue/package/debversion.sh) && \
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) \
	NONQUEUE_DEB_VERSION="$$v" NONQUEUE_BIN=dist/nonqueue NONQUEUE_ARCH=$$($(GO) env GOARCH) \
	  $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION) pkg \
	    --config cmd/nonqueue/package/nfpm.yaml --packager deb --target dist/
	@ls -l dist/*.deb

schema:
	$(GO) run ./cmd/nonqueue schema print > sql/schema.sql

clean:
	rm -rf bin dist

# nonqueue: make test runs the whole suite (integration included) on real
# MariaDB and sshd started by the tests themselves.
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build deps test vet bench bench-claim schema demo clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/nonqueue ./cmd/nonqueue

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1)
	$(GO) vet ./...

# -p 2: each integration package starts its own topology; two at a time
# fit a 2-core machine.
test: vet
	$(GO) test -race -p 2 -timeout 30m -count=1 ./...

# The benchmark (bench/README.md): its own sandbox (primary, 2 replicas,
# sshd), the original loop (bench/seed/seed-worker.sh) against nonqueue
# on the same topology, a table, bench/results.json, and a one-line JSON
# summary last. BENCH_QUICK=1 runs the small version (under 2 minutes).
bench: build
	$(GO) build -o bin/nqbench ./bench
	BENCH_QUICK="$(BENCH_QUICK)" bin/nqbench

# Claim throughput at 1, 8 and 32 concurrent claimers over 10,000 due topics.
bench-claim:
	$(GO) test -run '^$$' -bench BenchmarkClaim -benchtime 10000x -count 3 ./queue/

deps:
	bash .ci/deps

# The whole system on a local sandbox: primary, 2 replicas, sshd, the
# example procedure, 4 instances per replica, a few hundred topics.
# DEMO_ARGS=--keep leaves it running.
demo: build
	bash .ci/deps runtime
	bin/nonqueue demo $(DEMO_ARGS)

schema:
	$(GO) run ./cmd/nonqueue schema print > sql/schema.sql

clean:
	rm -rf bin

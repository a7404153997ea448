# cardsync build, run, test and benchmark entry points.
GO          ?= go
BIN         := bin/cardsync
GOPATH_BIN  := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOPATH_BIN)/staticcheck
STATICCHECK_VERSION := v0.8.2
DEV_DIR     ?= .cardsync-dev
# Packages whose code runs goroutines concurrently: run under the race detector.
RACE_PKGS   := ./fsm/... ./membership/... ./node/... ./syncer/... ./carrier/...

.PHONY: all build run test race lint vet staticcheck bench bench-quick chaos fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/cardsync

## run: a single dev node with the carrier simulator and sample inventory; dashboard on http://127.0.0.1:8700/ui/
run: build
	./$(BIN) agent -dev -data-dir $(DEV_DIR)

## test: every unit and integration test (real Raft, gossip and sockets on 127.0.0.1)
test:
	$(GO) test -count=1 -timeout 9m ./...

## race: the concurrent packages under the race detector, one package at a time (the
## detector slows the integration clusters several-fold; two packages' clusters at once on
## a 2-core machine starve each other's heartbeats)
race:
	$(GO) test -count=1 -race -p 1 -timeout 40m $(RACE_PKGS)

vet:
	$(GO) vet ./...

$(STATICCHECK):
	GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

staticcheck: $(STATICCHECK)
	$(STATICCHECK) ./...

lint: vet staticcheck

## bench: benchmarks of record, written to docs/benchmarks.md and docs/benchmarks.json
bench:
	bash bench/run.sh

## bench-quick: every scenario at reduced size (a few minutes)
bench-quick:
	QUICK=1 bash bench/run.sh

## chaos: fault injection with invariant checking, 10 seeds in a row (SEEDS="1 2" to choose)
SEEDS ?= 1 2 3 4 5 6 7 8 9 10
chaos:
	@for s in $(SEEDS); do \
	  echo "== chaos seed $$s"; \
	  CARDSYNC_CHAOS_SEED=$$s $(GO) test -run TestChaos -count=1 -timeout 20m -v ./chaos || exit 1; \
	done

## fuzz: run each fuzz target briefly (FUZZTIME=10m for a long run)
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$t"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin $(DEV_DIR)

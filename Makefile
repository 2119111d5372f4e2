# Thin wrapper over CMake/Ninja; see README.md for the two commands that matter.
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
CMAKE_FLAGS ?=
DEMO_ARGS ?=
NODE_TEST_FLAGS ?= --test-concurrency=1

.PHONY: all build deps demo test test-demo test-unit test-e2e test-interop test-asan format format-check bench bench-http bench-gateway bench-shop bench-registry bench-collector bench-saga fuzz clean

all: build

deps:
	@scripts/deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DTR_WERROR=ON $(CMAKE_FLAGS)

build: $(BUILD)/build.ninja
	ninja -C $(BUILD)

demo: deps build
	@scripts/demo.sh $(DEMO_ARGS)

# The demo story as a test: `make demo DEMO_ARGS=--once` without the set-up step.
test-demo: build
	scripts/demo.sh --once

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	@clang-format --dry-run -Werror $$(git ls-files '*.c' '*.h') && echo "format: ok"

test-unit: build
	ctest --test-dir $(BUILD) --output-on-failure -j2

test-e2e: build
	cd tests/e2e && TRELLIS_BIN=$(CURDIR)/$(BUILD)/trellis node --test $(NODE_TEST_FLAGS) *.test.mjs

# Peer suites nobody here wrote, run unchanged against `trellis registry` (needs scripts/deps.sh).
test-interop: build
	TRELLIS_BIN=$(abspath $(BUILD))/trellis tests/interop/consul-api-go.sh

$(ASAN_BUILD)/build.ninja:
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DTR_WERROR=ON -DTR_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

test-asan: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(ASAN_BUILD) --output-on-failure -j2
	cd tests/e2e && TRELLIS_SANITIZED=1 TRELLIS_BIN=$(CURDIR)/$(ASAN_BUILD)/trellis \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  node --test $(NODE_TEST_FLAGS) *.test.mjs
	TRELLIS_SANITIZED=1 TRELLIS_BIN=$(abspath $(ASAN_BUILD))/trellis \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  tests/interop/consul-api-go.sh

test: deps format-check
	$(MAKE) test-unit test-e2e test-demo test-interop test-asan

bench: bench-http bench-gateway bench-registry bench-collector bench-saga bench-shop

# The shop through the gateway (wrk, JWT on every request) and its services' idle RSS.
bench-shop: deps build
	bench/shop.sh

bench-http: deps build
	bench/http.sh

bench-gateway: deps build
	bench/gateway.sh

# The registry against Consul's API load; the collector's OTLP ingest.
bench-registry: deps build
	bench/registry.sh

bench-collector: deps build
	bench/collector.sh

# Durable sagas (sync normal, then an fsync per commit) and the event store's appends and reads.
bench-saga: deps build
	bench/saga.sh
	bench/saga.sh --sync full
	bench/eventstore.sh

$(FUZZ_BUILD)/build.ninja:
	CC=clang cmake -S . -B $(FUZZ_BUILD) -G Ninja -DTR_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo

fuzz: deps $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD)
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)

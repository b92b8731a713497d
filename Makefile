# Two commands: `make demo` runs the main job, `make test` runs the tests. Each installs the
# Debian packages it needs first (as root; otherwise it prints the apt-get line).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all setup configure build demo test bench clean

all: build

setup:
	@bash scripts/setup.sh

configure: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) > $(BUILD).configure.log 2>&1 || (cat $(BUILD).configure.log; exit 1)

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# Trains a byte-level Mamba LM on Debian's fortunes for at most 5 minutes, writes runs/demo and
# prints generated text. DEMO_ARGS passes options (make demo DEMO_ARGS="--mixer mamba2").
DEMO_ARGS ?=
demo: build
	./$(BUILD)/examples/train_lm --out runs/demo $(DEMO_ARGS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: build
	./$(BUILD)/bench/bench_elementwise
	./$(BUILD)/bench/bench_matmul

clean:
	rm -rf $(BUILD) $(BUILD).configure.log

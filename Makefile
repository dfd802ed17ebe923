# podshark — the two front doors: `make run` and `make test`.
# Both install what they need (system packages through apt when run as root or with sudo,
# Python packages into ./.venv) and then do their job.

PY ?= python3
VENV ?= .venv
ARGS ?=

.PHONY: run test install install-dev lint bench bpf clean

run:
	@bash scripts/phases.sh run $(ARGS)

test:
	@bash scripts/phases.sh test

install:
	@bash scripts/phases.sh install

lint:
	@bash scripts/phases.sh lint

bench:
	@bash scripts/phases.sh bench

# The eBPF objects are committed beside their sources; rebuild them after editing a .bpf.c
# (needs clang, bpftool and libbpf-dev: apt-get install clang bpftool libbpf-dev).
bpf: capture/ebpf/conntrace.bpf.o

capture/ebpf/%.bpf.o: capture/ebpf/%.bpf.c
	bash capture/ebpf/build.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis

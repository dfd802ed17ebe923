# podshark — the two front doors: `make run` and `make test`.
# Both install what they need (system packages through apt when run as root or with sudo,
# Python packages into ./.venv) and then do their job.

PY ?= python3
VENV ?= .venv
ARGS ?= dissect fixtures/pcaps/http1__zeek_pipelined-requests.pcap

.PHONY: run test install install-dev lint bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis

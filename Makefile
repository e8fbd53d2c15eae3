# Two commands do all set-up on a fresh Debian machine (run as root):
#   make run    install what is needed, check the host, serve on http://127.0.0.1:8000/
#   make test   install what is needed, run the whole test suite
.PHONY: run test test-fast bench lint clean fuzz

run:
	scripts/setup
	.venv/bin/replroom doctor
	.venv/bin/replroom serve

test:
	scripts/test

# Seconds: the tests that need no root, no sandbox and no server, and the linters.
test-fast:
	@test -x .venv/bin/python || scripts/setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -m fast -q -p no:cacheprovider

# Benchmarks print figures next to their targets (rooms.py includes the design
# note's own workload, bench/seed.py); the docker ones run when DOCKER_HOST is set
# (export "$$(scripts/dockerd start)" first).
bench:
	scripts/setup
	.venv/bin/python bench/sandbox.py
	.venv/bin/python bench/rooms.py
	.venv/bin/python bench/web.py
	.venv/bin/python bench/members.py
	.venv/bin/python bench/density.py
	.venv/bin/python bench/screen.py

# Hostile input, fuzzed for longer than make test does (docs/protocol.md).
fuzz:
	scripts/setup
	.venv/bin/replroom image build
	HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_fuzz.py -s

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

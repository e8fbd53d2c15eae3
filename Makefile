# Two commands do all set-up on a fresh Debian machine (run as root):
#   make run    install what is needed, check the host, start replroom
#   make test   install what is needed, run the whole test suite
.PHONY: run test bench lint clean

run:
	scripts/setup
	.venv/bin/replroom doctor
	.venv/bin/replroom sandbox run --memory 100m --cpus 0.05 -- python3 -c 'import sys; print("hello from a replroom sandbox, Python", sys.version.split()[0])'

test:
	scripts/test

bench:
	scripts/setup
	.venv/bin/python bench/sandbox.py

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

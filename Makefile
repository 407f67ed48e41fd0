# The two commands of the README. Each works on a fresh machine with Python 3.11.
.PHONY: demo test
demo:  ## install into .venv and run `multistore demo` on embedded stores
	@scripts/demo
test:  ## install test deps (and servers, as root on Debian), then ruff, mypy, pytest
	@scripts/test

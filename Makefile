# The two commands: `make demo` runs the main job end to end, `make test` runs every check:
# formatting, clippy (warnings are errors), every unit/integration test, the doc tests, and a
# check that every fuzz corpus is replayed by some test. Both install what is missing first
# (scripts/setup.sh).

CARGO ?= cargo
PROFILE ?= release
TEST_PROFILE ?= ci

.PHONY: setup build demo test lint corpus-check bench clean

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --locked --profile $(PROFILE) -p vmedia

demo: build
	bash scripts/demo.sh target/$(PROFILE)/vmedia

test: setup lint corpus-check
	CARGO=$(CARGO) python3 scripts/run-tests.py --profile $(TEST_PROFILE) -- --locked --workspace --lib --bins --tests
	$(CARGO) test --locked --profile $(TEST_PROFILE) --workspace --doc

# Style and lints, cheapest first (rustfmt takes no --locked: it resolves nothing).
lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --profile $(TEST_PROFILE) --workspace --all-targets -- -D warnings

# Every folder under fuzz/corpus must be named by a test that replays it (by its path
# `corpus/NAME` or as the string "NAME"), so `make test` runs every corpus file.
corpus-check:
	@missing=0; \
	for dir in fuzz/corpus/*/; do \
	  target=$$(basename "$$dir"); \
	  if ! grep -rqF -e "corpus/$$target" -e "\"$$target\"" crates --include='*.rs'; then \
	    echo "corpus-check: fuzz/corpus/$$target is replayed by no test"; missing=1; \
	  fi; \
	done; \
	exit $$missing

bench: build
	for b in bench/*.sh; do [ "$$b" = bench/lib.sh ] || bash $$b target/$(PROFILE)/vmedia; done

clean:
	$(CARGO) clean
	rm -rf demo-out

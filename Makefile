# The two commands: `make demo` runs the main job end to end, `make test` runs every test.
# Both install what is missing first (scripts/setup.sh).

CARGO ?= cargo
PROFILE ?= release
TEST_PROFILE ?= ci

.PHONY: setup build demo test bench clean

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --locked --profile $(PROFILE) -p vmedia

demo: build
	bash scripts/demo.sh target/$(PROFILE)/vmedia

test: setup
	$(CARGO) test --locked --profile $(TEST_PROFILE) --workspace --no-fail-fast --lib --bins --tests

bench: build
	for b in bench/*.sh; do bash $$b target/$(PROFILE)/vmedia; done

clean:
	$(CARGO) clean
	rm -rf demo-out

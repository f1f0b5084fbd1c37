# dgan tasks. `just demo` and `just test` are the README's quick start.
venv := ".venv"
bin := venv / "bin"

default: demo

# Create or reuse .venv and install dgan into it (torch: the CPU wheel, skipped when importable).
setup:
    test -x {{bin}}/python || python3 -m venv {{venv}}
    {{bin}}/python -c "import torch" 2>/dev/null || {{bin}}/python -m pip install -q torch==2.13.0
    {{bin}}/python -m pip install -q -e ".[dev]"

# Train on the built-in scenes with 4 nodes, synthesise, and evaluate.
demo *ARGS: setup
    {{bin}}/dgan demo {{ARGS}}

# Debian's Chromium and ChromeDriver for the report's browser test (root, as on these machines).
browser:
    command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) || \
        (echo "install Debian's chromium and chromium-driver (as root) for the browser test" && exit 1)

# Lint, then the whole test suite.
test *ARGS: setup browser
    {{bin}}/ruff check .
    {{bin}}/python -m pytest {{ARGS}}

lint: setup
    {{bin}}/ruff check .

bench-transport *ARGS: setup
    {{bin}}/dgan bench transport {{ARGS}}

bench-training *ARGS: setup
    {{bin}}/dgan bench training {{ARGS}}

bench-straggler *ARGS: setup
    {{bin}}/dgan bench straggler {{ARGS}}

bench-privacy *ARGS: setup
    {{bin}}/dgan bench privacy {{ARGS}}

bench-precision *ARGS: setup
    {{bin}}/dgan bench precision {{ARGS}}

bench-slow-node *ARGS: setup
    {{bin}}/dgan bench slow-node {{ARGS}}

bench-chaos *ARGS: setup
    {{bin}}/dgan bench chaos {{ARGS}}

bench-fuzz *ARGS: setup
    {{bin}}/dgan bench fuzz {{ARGS}}

# the issue-4 experiment on the Dubai patches (needs ../shared); PARTITION is group or iid
experiment PARTITION="group" *ARGS: setup
    {{bin}}/dgan experiment --data ../shared/data/dubai_aerial_buildings --partition {{PARTITION}} {{ARGS}}

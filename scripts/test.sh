#!/usr/bin/env bash
# The whole test suite: lint, formatting, types, protobuf contracts, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PWD/node_modules/.bin:$PATH"

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

step "ruff"
ruff check .
ruff format --check .
step "mypy"
mypy services tests bench scripts clients/python/macp_client
step "buf lint / buf format"
buf lint
buf format --diff --exit-code
step "pytest"
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"

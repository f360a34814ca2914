#!/usr/bin/env bash
# Installs everything the project needs from its own files (pip, npm, apt-get), then runs
# `macp up` (mode "up") or the whole test suite (mode "test"); mode "lock" refreshes the Python
# lock files first. Re-running is cheap: each step is skipped while the file that drives it is
# unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-}"
case "$mode" in
  up|test|lock) shift ;;
  *) echo "usage: ./dev up [macp up options] | ./dev test [pytest options] | ./dev lock [--package NAME]" >&2
     exit 2 ;;
esac

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

stamp_matches() {  # stamp_matches NAME FILE... : true when FILES are unchanged since the last install
  local want; want=$(cat "${@:2}" | sha256sum | cut -d' ' -f1)
  [ -f ".venv/.stamp-$1" ] && [ "$(cat ".venv/.stamp-$1")" = "$want" ]
}
write_stamp() { cat "${@:2}" | sha256sum | cut -d' ' -f1 > ".venv/.stamp-$1"; }

# The environment is exactly requirements.lock: every distribution pinned, every file checked
# against its hash, nothing resolved here. A changed lock builds the environment anew, so a
# package the lock dropped cannot linger; `./dev lock` is the one way to move a version.
if [ ! -x .venv/bin/python ] || ! stamp_matches lock requirements.lock; then
  say "installing Python packages (requirements.lock, hashes checked)"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
  write_stamp lock requirements.lock
fi
if ! stamp_matches project pyproject.toml; then
  say "installing the macp project itself (pyproject.toml)"
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  write_stamp project pyproject.toml
fi
if ! stamp_matches client clients/python/pyproject.toml; then
  say "installing the Python client (clients/python/pyproject.toml)"
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e clients/python
  write_stamp client clients/python/pyproject.toml
fi

if [ "$mode" = lock ]; then
  .venv/bin/python scripts/lock.py "$@"
  exec bash "$0" test
fi

# npm: the buf CLI and the OpenAI Node SDK for the tests, and the web console's toolchain, which
# both modes need: `macp up` serves the console's build (console/dist), made here whenever its
# sources or the npm lock changed.
if ! stamp_matches npm package.json package-lock.json || [ ! -d node_modules/.bin ]; then
  say "installing npm packages (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error
  write_stamp npm package.json package-lock.json
fi
console_sources() { find console -path console/dist -prune -o -type f -print 2>/dev/null | LC_ALL=C sort; }
if [ -d console ]; then
  mapfile -t sources < <(console_sources)
  if ! stamp_matches console package-lock.json "${sources[@]}" || [ ! -f console/dist/index.html ]; then
    say "building the web console (console/, npm run build:console)"
    npm run --silent --if-present build:console
    write_stamp console package-lock.json "${sources[@]}"
  fi
fi

if [ "$mode" = test ]; then
  # Debian's packages the tests use: docker-compose (compose.yaml is checked statically; no engine
  # is needed) and Chromium, which Playwright drives for the console's browser tests (a browser
  # Playwright downloads itself would be a file no lock pins).
  missing=()
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian's ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  exec bash scripts/test.sh "$@"
fi

exec .venv/bin/macp up "$@"

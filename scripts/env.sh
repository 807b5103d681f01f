# Sourced by scripts/serve and scripts/test: make a venv with roomcast and what it needs.
# Usage: . scripts/env.sh [extras]    (extras default: none; e.g. "test,bench")
#
# Default: .venv from requirements/test.lock (exact versions, the ones CI tests), then
# roomcast itself editable with --no-deps. scripts/serve installs the lock too, not the
# ranges: a fresh machine then runs what was tested, and the lock is a superset of the
# runtime dependencies (it only adds the test tools). The extras matter only for
# ROOMCAST_LATEST. Reinstalls when the lock or pyproject.toml is newer than the stamp.
#
# ROOMCAST_LATEST=1 (scripts/test --latest): .venv-latest instead, upgraded on every run
# to the newest versions the ranges in pyproject.toml allow, extras included.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "roomcast needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
LOCK="$ROOT/requirements/test.lock"
EXTRAS="${1:-}"
if [ -n "${ROOMCAST_LATEST:-}" ]; then
  VENV="$ROOT/.venv-latest"
else
  VENV="$ROOT/.venv"
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VENV_PY="$VENV/bin/python"
PIP=("$VENV_PY" -m pip --disable-pip-version-check)
if [ -n "${ROOMCAST_LATEST:-}" ]; then
  SPEC="$ROOT"
  [ -n "$EXTRAS" ] && SPEC="$ROOT[$EXTRAS]"
  echo "== ${VENV#"$ROOT"/}: newest versions the ranges in pyproject.toml allow" >&2
  "${PIP[@]}" install --quiet --upgrade pip >/dev/null
  "${PIP[@]}" install --quiet --upgrade --upgrade-strategy eager -e "$SPEC"
else
  STAMP="$VENV/.roomcast-installed-lock"
  if [ ! -f "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "${PIP[@]}" install --quiet --upgrade pip >/dev/null
    "${PIP[@]}" install --quiet -r "$LOCK"
    "${PIP[@]}" install --quiet --no-deps -e "$ROOT"
    # A dependency added to pyproject.toml but not yet locked shows up here.
    if ! check="$("${PIP[@]}" check 2>&1)"; then
      echo "$check" >&2
      echo "requirements/test.lock does not satisfy pyproject.toml: run scripts/lock" >&2
      exit 1
    fi
    touch "$STAMP"
  fi
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"

# Print the installed versions of the packages whose versions matter most.
roomcast_versions() {
  "$VENV_PY" - "${VENV#"$ROOT"/}" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

def v(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"

names = ["redis", "websockets", "uvicorn", "starlette", "orjson", "pyjwt"]
print(f"== versions in {sys.argv[1]}: " + ", ".join(f"{n} {v(n)}" for n in names))
PYEOF
}

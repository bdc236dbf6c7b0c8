# Sourced by scripts/demo, scripts/test and scripts/smoke: virtual environments built from this
# repository's own files, and a PostgreSQL server to test against.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# find_python 3.12: print the path of a working python3.12 (PATH, then pyenv's), or nothing.
find_python() {
  local version="$1" candidate
  local candidates=("$(command -v "python$version" 2>/dev/null || true)")
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=($(ls -d "$(pyenv root)"/versions/"$version".*/bin/"python$version" 2>/dev/null | sort -rV))
  fi
  for candidate in "${candidates[@]}"; do
    # A pyenv shim is on PATH even where that version is not selected: check that it runs.
    if [ -n "$candidate" ] && "$candidate" -c "import sys; assert sys.version.startswith('$version')" 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
}

# venv NAME PYTHON PIP-ARGS...: create .venv/NAME with PYTHON and install PIP-ARGS into it, once
# per change of pyproject.toml or of the arguments. Prints the venv's python.
venv() {
  local name="$1" python="$2"
  shift 2
  local dir="$ROOT/.venv/$name"
  local stamp
  stamp="$(cat "$ROOT/pyproject.toml" <(echo "$*") | sha256sum | cut -c1-16)"
  if [ ! -f "$dir/.stamp-$stamp" ]; then
    echo "Installing into .venv/$name ..." >&2
    rm -rf "$dir"
    "$python" -m venv "$dir" >&2
    # pip's chatter goes to a log, shown only if the installation fails.
    if ! { "$dir/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
           "$dir/bin/python" -m pip install --disable-pip-version-check "$@"; } > "$dir.log" 2>&1; then
      cat "$dir.log" >&2
      echo "Installing into .venv/$name failed (log above)." >&2
      return 1
    fi
    touch "$dir/.stamp-$stamp"
  fi
  echo "$dir/bin/python"
}

# The test suite's first environment, Python 3.11 and Django 5.2 LTS, with the test extra (ruff,
# mypy, build, twine...): scripts/test and scripts/smoke. Prints its python.
test_venv() {
  local py311
  py311="$(find_python 3.11)"
  venv py311-django52 "${py311:-python3}" -e "$ROOT[test,browser]" "Django>=5.2,<5.3"
}

# Start the local PostgreSQL cluster if it is installed and not answering.
ensure_postgres() {
  local host="${PGHOST:-127.0.0.1}" port="${PGPORT:-5432}"
  if pg_isready -q -h "$host" -p "$port" 2>/dev/null; then return 0; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "PostgreSQL is not answering on $host:$port; starting it." >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start >&2 || true
    for _ in $(seq 1 30); do
      pg_isready -q -h "$host" -p "$port" 2>/dev/null && return 0
      sleep 1
    done
  fi
  echo "PostgreSQL is not reachable on $host:$port (set PGHOST/PGPORT/PGUSER)." >&2
  return 1
}

# apt_install PACKAGE WHAT: install a Debian package the tests use, when we may (root); quiet
# unless it fails, and then the tests that need it skip (outside CI).
apt_install() {
  local package="$1" what="$2"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing $package (apt) for $what ..." >&2
    if { apt-get install -y -q "$package" ||
         { apt-get update -q && apt-get install -y -q "$package"; }; } > /tmp/pgqrs-apt.log 2>&1; then
      return 0
    fi
    echo "Could not install $package (see /tmp/pgqrs-apt.log); $what will skip." >&2
  fi
  return 0
}

# Debian's Chromium, for the admin's browser test.
ensure_chromium() {
  [ -x /usr/bin/chromium ] || apt_install chromium "the admin's browser test"
}

# Debian's PgBouncer, for the tests behind a pooler (Debian keeps it in /usr/sbin, which is not
# on every user's PATH).
ensure_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] ||
    apt_install pgbouncer "the tests behind a connection pooler"
}

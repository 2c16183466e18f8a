# Shared by scripts/demo and scripts/test: a virtual environment in .venv and the services.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Machines that carry a local CPU build of torch keep it in /opt/wheels; prefer it to the
# multi-gigabyte CUDA build from the registry.
if [ -d /opt/wheels ]; then
  export PIP_FIND_LINKS="/opt/wheels${PIP_FIND_LINKS:+ $PIP_FIND_LINKS}"
fi

setup_venv() {  # setup_venv REQUIREMENTS_FILE
  local req="$1"
  # Headless rendering (OSMesa) and video encoding.
  apt_install libosmesa6 ffmpeg
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "${PYTHON:-python3}" -m venv .venv
  fi
  local stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$req")"
  if [ ! -f "$stamp" ]; then
    echo "==> installing $req (first run takes a minute or two)"
    # (grep drops one harmless notice some machines' pip configuration prints per package)
    { .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req" &&
      .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
        -r requirements-nodeps.txt; } 2>&1 | { grep -v "is ignored: it is neither" || true; }
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "pip install failed" >&2; return 1; }
    touch "$stamp"
  fi
}

apt_install() {  # apt_install PACKAGE... (only what is missing; needs root)
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing system packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

start_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  echo "==> starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 1; done
  echo "PostgreSQL did not start" >&2; return 1
}

start_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server
  echo "==> starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0; sleep 1; done
  echo "Redis did not start" >&2; return 1
}

#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently: Debian packages (podman,
# runc, debootstrap, slirp4netns, openssh-client) and a venv (.venv) with this package and the
# test tools. Safe to re-run; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in podman:podman runc:runc debootstrap:debootstrap slirp4netns:slirp4netns \
            ssh:openssh-client ssh-keygen:openssh-client newuidmap:uidmap systemd-analyze:systemd \
            node:nodejs npm:npm pipx:pipx; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need root to apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "setup: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.mlops-provision-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing the package and test tools into .venv (uv)"
  # uv resolves and installs the ~100 packages in a quarter of pip's time and CPU (measured on
  # 2 cores, warm caches: pip 92 s / 91 CPU-s, uv 25 s / 28 CPU-s): this runs on every clean
  # clone, before anything else can. It writes no bytecode; imports write what they use.
  # pip stays the fallback (a machine whose index is reachable only through pip's own config).
  .venv/bin/pip install -q --disable-pip-version-check uv
  UV_LINK_MODE=copy .venv/bin/uv pip install -q --python .venv/bin/python -e '.[test]' \
    || .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
# Azurite, the Azure Blob emulator the artifact-store tests run, from the npm registry.
if [[ ! -x .cache/azurite/node_modules/.bin/azurite-blob ]]; then
  echo "setup: npm install azurite@3 into .cache/azurite"
  mkdir -p .cache/azurite
  (cd .cache/azurite && npm install --silent --no-audit --no-fund azurite@3 >/dev/null)
fi
# Prometheus and promtool, for the alert rules' tests (tests/unit/test_alert_rules.py and the
# real Prometheus of tests/e2e/test_air_gapped.py): Debian's prometheus package unpacked into
# .cache/prometheus, not installed, so no Prometheus service starts on this machine.
if [[ ! -x .cache/prometheus/usr/bin/promtool || ! -x .cache/prometheus/usr/bin/prometheus ]]; then
  echo "setup: apt-get download prometheus, unpacked into .cache/prometheus"
  deb_dir=$(mktemp -d)
  trap 'rm -rf "$deb_dir"' EXIT
  # Empty or stale package lists (a fresh machine where nothing else was missing): update once.
  if ! (cd "$deb_dir" && apt-get download -q prometheus >"$deb_dir/log" 2>&1); then
    apt-get update -qq
    (cd "$deb_dir" && apt-get download -q prometheus >"$deb_dir/log" 2>&1) || { cat "$deb_dir/log" >&2; exit 1; }
  fi
  rm -rf .cache/prometheus
  mkdir -p .cache/prometheus
  dpkg-deb -x "$deb_dir"/prometheus_*.deb .cache/prometheus
  rm -rf "$deb_dir"
  trap - EXIT
fi
echo "setup: ready"

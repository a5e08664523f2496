#!/usr/bin/env bash
# What users install, built and installed the way they would: `python -m build` makes the sdist
# and the wheel once (into .cache/dist), the wheel goes into a fresh venv outside the checkout
# ($MLOPS_PROVISION_INSTALLED_ROOT/venv, default ~/.cache/mlops-provision-installed), and pipx installs
# the same wheel (~/.cache/mlops-provision-installed/pipx). The demo, the end-to-end tests and the
# benchmarks run those binaries, never the checkout's editable install: a file in git but not in
# the package fails there, as it would for a user.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${MLOPS_PROVISION_INSTALLED_ROOT:-$HOME/.cache/mlops-provision-installed}
dist=.cache/dist
# Nothing to do when what goes into the packages is what the last install was built from
# (`make test` runs this once beside lint, and `make e2e` asks again).
stamp=$(git ls-files -z cli roles playbooks templates prometheus meta pyproject.toml galaxy.yml README.md CHANGELOG.md \
          scripts/build_collection.py scripts/install_built.sh | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [[ -f $root/stamp && $(cat "$root/stamp") == "$stamp" && -x $root/venv/bin/mlops-provision \
      && -n $(ls "$dist"/collection/mlops_provision-mlflow-*.tar.gz 2>/dev/null) ]]; then
  echo "install: up to date ($root/venv/bin/mlops-provision)"
  exit 0
fi
rm -f "$root/stamp"
rm -rf "$dist"
echo "install: python -m build (sdist and wheel)"
# uv (which setup puts in .venv) fills build's isolated environments faster than pip does.
installer=(); [[ -x .venv/bin/uv ]] && installer=(--installer uv)
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m build "${installer[@]}" --outdir "$dist" . >.cache/build.log 2>&1 \
  || { cat .cache/build.log; exit 1; }
wheel=$(ls "$dist"/mlops_provision-*.whl)
ls "$dist"/mlops_provision-*.tar.gz >/dev/null
echo "install: the Ansible collection mlops_provision.mlflow (scripts/build_collection.py)"
.venv/bin/python scripts/build_collection.py --output-path "$dist/collection" >>.cache/build.log 2>&1 \
  || { cat .cache/build.log; exit 1; }
# The version in the wheel's name is the one pyproject.toml and galaxy.yml agree on.
echo "install: $(basename "$wheel") into $root/venv"
rm -rf "$root/venv"
mkdir -p "$root"
python3 -m venv "$root/venv"
"$root/venv/bin/pip" install -q --disable-pip-version-check "$wheel"
# From outside the checkout, the package must come from the venv's site-packages.
(cd / && "$root/venv/bin/python" -c "
import mlops_provision, sys
from mlops_provision import paths
assert '/site-packages/mlops_provision' in mlops_provision.__file__, mlops_provision.__file__
assert '/site-packages/' in str(paths.playbook('deploy')), paths.playbook('deploy')
")
if command -v pipx >/dev/null 2>&1; then
  echo "install: pipx install $(basename "$wheel") into $root/pipx"
  rm -rf "$root/pipx"
  PIPX_HOME="$root/pipx/home" PIPX_BIN_DIR="$root/pipx/bin" PIPX_MAN_DIR="$root/pipx/man" \
    pipx install "$wheel" >/dev/null 2>&1
fi
echo "$stamp" >"$root/stamp"
echo "install: ready ($root/venv/bin/mlops-provision)"

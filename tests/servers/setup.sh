#!/usr/bin/env bash
# Installs the real servers the probe and object-store fetch tests run against, once per machine,
# into versioned directories under ~/.cache/model-operator. Idempotent: a directory that holds its
# `.complete` marker is left alone, so a second run costs a few stat calls.
#
#   tritonserver   the Triton 2.51.0 binary bundled in the nvidia-pytriton 0.7.0 wheel (CPU only),
#                  with a python-backend directory whose stub matches Debian's python3.11
#                  (so python-backend models import Debian's python3-numpy)
#   python venv    Debian's python3.11 + Debian's CPU python3-torch (PyPI's Linux torch is a
#                  multi-GB CUDA build), with TorchServe 0.12.0, torch-model-archiver and the
#                  inference/ app's requirements (FastAPI, uvicorn, prometheus_client, pytest)
#   moto_server    moto 5.2.5's S3 (and IAM) server mode, in a venv of its own (Debian's python3.11)
#   fake-gcs-server
#                  fake-gcs-server v1.56.1, built from its Go module with the local Go toolchain
#                  (static, CGO_ENABLED=0; module and build caches under the cache, as
#                  tests/cluster/ keeps them)
#
# The object-store fetch tests also need openssl (they make a service account's RSA key with it).
# Needs root for apt (Java 17, python3-torch, python3.11-venv, openssl) when those are missing.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${MODEL_OPERATOR_CACHE:-$HOME/.cache/model-operator}"
PYTRITON_VERSION=0.7.0
TRITON_DIR="$CACHE/tritonserver-2.51.0-pytriton-$PYTRITON_VERSION"
TORCHSERVE_VERSION=0.12.0
# The venv's name changes whenever what goes into it changes, so a stale one is never reused.
REQUIREMENTS_HASH="$(cat "$REPO_ROOT/inference/requirements-test.txt" "$REPO_ROOT/inference/requirements.txt" | sha256sum | cut -c1-12)"
VENV_DIR="$CACHE/py311-debian-torch-ts$TORCHSERVE_VERSION-$REQUIREMENTS_HASH"
DEBIAN_PYTHON=/usr/bin/python3.11
MOTO_VERSION=5.2.5
MOTO_DIR="$CACHE/moto-$MOTO_VERSION"
FAKE_GCS_VERSION=v1.56.1
FAKE_GCS_DIR="$CACHE/fake-gcs-server-$FAKE_GCS_VERSION"
GO=/usr/local/go/bin/go

log() { printf '[test-servers] %s\n' "$*" >&2; }

apt_packages_missing() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    printf '%s\n' "${missing[@]}"
}

install_apt_packages() {
    mapfile -t missing < <(apt_packages_missing python3.11 python3.11-venv python3-torch python3-numpy openjdk-17-jre-headless openssl | sed '/^$/d')
    if ((${#missing[@]} == 0)); then
        return
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "missing Debian packages: ${missing[*]}; run as root or install them with apt-get"
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_tritonserver() {
    if [[ -f "$TRITON_DIR/.complete" ]]; then
        return
    fi
    log "installing tritonserver from nvidia-pytriton $PYTRITON_VERSION into $TRITON_DIR"
    local staging="$TRITON_DIR.partial"
    rm -rf "$staging"
    mkdir -p "$staging/wheel"
    # Only the wheel's files are needed (the server binary and its libraries), not its Python
    # deps; the venv's pip fetches it, since Debian's python3.11 may come without pip.
    "$VENV_DIR/bin/pip" download --quiet --no-deps --dest "$staging" "nvidia-pytriton==$PYTRITON_VERSION"
    "$VENV_DIR/bin/python" -m zipfile -e "$staging"/nvidia_pytriton-*.whl "$staging/wheel"
    rm "$staging"/nvidia_pytriton-*.whl
    local server="$staging/wheel/pytriton/tritonserver"
    chmod +x "$server/bin/tritonserver" "$server"/python_backend_stubs/*/triton_python_backend_stub
    # Triton wants <backends>/python/{libtriton_python.so, triton_python_backend_utils.py,
    # triton_python_backend_stub}; the wheel keeps one stub per Python version elsewhere.
    mkdir -p "$staging/backends/python"
    cp "$server"/backends/python/* "$staging/backends/python/"
    cp "$server/python_backend_stubs/3.11/triton_python_backend_stub" "$staging/backends/python/"
    ln -s wheel/pytriton/tritonserver/bin/tritonserver "$staging/tritonserver"
    touch "$staging/.complete"
    rm -rf "$TRITON_DIR"
    mv "$staging" "$TRITON_DIR"
}

install_python_venv() {
    if [[ -f "$VENV_DIR/.complete" ]]; then
        return
    fi
    log "creating $VENV_DIR"
    # A venv records its own path in its scripts, so it is built in place; without the marker a
    # half-built one from an interrupted run is thrown away first.
    rm -rf "$VENV_DIR"
    # System site packages bring Debian's torch and numpy; pip adds only what Debian lacks.
    "$DEBIAN_PYTHON" -m venv --system-site-packages "$VENV_DIR"
    "$VENV_DIR/bin/pip" install --quiet \
        "torchserve==$TORCHSERVE_VERSION" "torch-model-archiver==$TORCHSERVE_VERSION" \
        -r "$REPO_ROOT/inference/requirements.txt" -r "$REPO_ROOT/inference/requirements-test.txt"
    "$VENV_DIR/bin/python" -c 'import torch, fastapi, uvicorn, prometheus_client, ts, model_archiver' ||
        { log "the venv in $VENV_DIR cannot import its packages"; exit 1; }
    touch "$VENV_DIR/.complete"
}

# The S3 fetch tests' server. Its own venv: moto pins Flask, Werkzeug and boto versions that the
# inference app's environment has no business sharing.
install_moto() {
    if [[ -f "$MOTO_DIR/.complete" ]]; then
        return
    fi
    log "installing moto[server] $MOTO_VERSION into $MOTO_DIR"
    rm -rf "$MOTO_DIR"
    "$DEBIAN_PYTHON" -m venv "$MOTO_DIR"
    "$MOTO_DIR/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
    "$MOTO_DIR/bin/python" -c 'import moto.server, moto.s3, moto.iam' ||
        { log "the venv in $MOTO_DIR cannot import moto's server"; exit 1; }
    [[ -x "$MOTO_DIR/bin/moto_server" ]] || { log "moto $MOTO_VERSION installed no bin/moto_server"; exit 1; }
    touch "$MOTO_DIR/.complete"
}

# The GCS fetch tests' server, built from source: the Go proxy is reachable where release
# downloads may not be.
install_fake_gcs_server() {
    if [[ -f "$FAKE_GCS_DIR/.complete" ]]; then
        return
    fi
    if [[ ! -x $GO ]]; then
        log "no Go toolchain at $GO: fake-gcs-server $FAKE_GCS_VERSION is built from source"
        exit 1
    fi
    log "building fake-gcs-server $FAKE_GCS_VERSION into $FAKE_GCS_DIR"
    local staging="$FAKE_GCS_DIR.partial"
    rm -rf "$staging"
    mkdir -p "$staging/src" "$staging/bin"
    (
        cd "$staging/src"
        export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
        export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build"
        "$GO" mod init model-operator.local/fake-gcs-server-build >/dev/null 2>&1
        "$GO" get -tool "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION"
        "$GO" build -trimpath -ldflags "-s -w" -o "$staging/bin/fake-gcs-server" github.com/fsouza/fake-gcs-server
    )
    rm -rf "$staging/src"
    local usage
    usage=$("$staging/bin/fake-gcs-server" -help 2>&1 || true)
    [[ $usage == *-public-host* ]] ||
        { log "$staging/bin/fake-gcs-server does not run (or lacks -public-host): $usage"; exit 1; }
    touch "$staging/.complete"
    rm -rf "$FAKE_GCS_DIR"
    mv "$staging" "$FAKE_GCS_DIR"
}

main() {
    install_apt_packages
    install_python_venv
    install_tritonserver
    install_moto
    install_fake_gcs_server
    # Tests find the installs through this file, so they never guess at versions themselves.
    mkdir -p "$CACHE"
    cat > "$CACHE/test-servers.env.partial" <<ENV
TRITONSERVER=$TRITON_DIR/tritonserver
TRITON_BACKENDS=$TRITON_DIR/backends
# The stub, copied out of the wheel, finds the wheel's libraries and Debian's libpython3.11 here.
TRITON_LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:$TRITON_DIR/wheel/nvidia_pytriton.libs
PYTHON=$VENV_DIR/bin/python
TORCHSERVE=$VENV_DIR/bin/torchserve
TORCH_MODEL_ARCHIVER=$VENV_DIR/bin/torch-model-archiver
MOTO_SERVER=$MOTO_DIR/bin/moto_server
FAKE_GCS_SERVER=$FAKE_GCS_DIR/bin/fake-gcs-server
ENV
    mv "$CACHE/test-servers.env.partial" "$CACHE/test-servers.env"
    log "ready: $CACHE/test-servers.env"
}

main "$@"

#!/usr/bin/env bash
# Builds a release binary of the operator or the node agent into OUT_DIR: the one build command
# that both the Dockerfile's build stages and `make release-build` run, so CI (which has no Docker
# engine) compiles exactly what goes into the images.
#
#   hack/build-release.sh operator OUT_DIR     static x86_64-unknown-linux-musl build (for a
#                                              distroless/static image: no libc in the image)
#   hack/build-release.sh node-agent OUT_DIR   glibc build: NVML (libnvidia-ml.so.1) is dlopen'ed
#                                              at run time, which a static musl binary cannot do
#   hack/build-release.sh --prepare TARGET     only install what TARGET's build needs (the musl
#                                              target and musl-gcc), for a cached Docker layer
#   hack/build-release.sh --verify OUT_DIR     check both binaries in OUT_DIR: the operator has no
#                                              dynamic dependency at all, the node agent needs glibc
#                                              but not NVML (dlopen'ed), and both start
#
# Honours CARGO_TARGET_DIR (CI points it at ~/.cache/model-operator/cargo-target) and CARGO.
# Builds with --locked: a release must build from the committed Cargo.lock.
set -euo pipefail

MUSL_TARGET=x86_64-unknown-linux-musl
CARGO=${CARGO:-cargo}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { printf 'build-release.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'build-release.sh: %s\n' "$*" >&2; }
usage() { die "usage: $0 operator|node-agent OUT_DIR  |  $0 --prepare operator|node-agent  |  $0 --verify OUT_DIR"; }

# The musl standard library and a C compiler for it: ring (rustls' crypto) compiles C and assembly,
# and the cc crate needs a musl-targeting gcc for that. Installs them where it can (as in the
# Dockerfile's builder, which runs as root), else says what is missing.
prepare_musl() {
  if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
    command -v rustup >/dev/null || die "the Rust target $MUSL_TARGET is needed and rustup is not installed to add it"
    log "adding the Rust target $MUSL_TARGET"
    rustup target add "$MUSL_TARGET"
  fi
  if ! command -v musl-gcc >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      log "installing musl-tools (musl-gcc)"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
    else
      die "musl-gcc is needed to compile ring's C code for $MUSL_TARGET: install musl-tools (apt-get install musl-tools)"
    fi
  fi
}

prepare() {
  case $1 in
    operator) prepare_musl ;;
    node-agent) ;; # the host's glibc toolchain is enough
    *) usage ;;
  esac
}

build_operator() {
  local out=$1
  prepare_musl
  # crt-static is the musl target's default; spelled out so the binary stays static even if a
  # user's RUSTFLAGS or config set target features. CC/AR for the cc crate (ring, jemalloc).
  # jemalloc's settings are compiled in (docs/faults.md#memory-after-churn): one arena and no
  # thread caches (a few threads; freed memory is not parked per thread), freed pages handed back
  # within a second by its background thread rather than kept for reuse, and a misspelt option
  # fatal rather than ignored.
  JEMALLOC_SYS_WITH_MALLOC_CONF="abort_conf:true,background_thread:true,narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0" \
  CC_x86_64_unknown_linux_musl=musl-gcc \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static" \
    "$CARGO" build --profile image --locked --target "$MUSL_TARGET" -p model-operator --bin model-operator --features jemalloc
  install -m 0755 "$(target_dir)/$MUSL_TARGET/image/model-operator" "$out/model-operator"
}

build_node_agent() {
  local out=$1
  # No --target: the host's release directory, shared with `make build` and the node agent's
  # benchmark, so a developer's or CI's earlier release build is reused.
  "$CARGO" build --release --locked -p node-agent --bin node-agent
  install -m 0755 "$(target_dir)/release/node-agent" "$out/node-agent"
}

# A static binary has no program interpreter (ld.so) and no DT_NEEDED entry; `file` is not on
# every machine, readelf (binutils, beside any C toolchain) is.
verify() {
  local out=$1
  command -v readelf >/dev/null || die "readelf (binutils) is needed to inspect the binaries"
  local operator="$out/model-operator" agent="$out/node-agent"
  [[ -x $operator && -x $agent ]] || die "$out must hold model-operator and node-agent (build them first)"
  if readelf -l "$operator" | grep -q 'program interpreter' || readelf -d "$operator" | grep -q NEEDED; then
    readelf -d "$operator" >&2
    die "$operator is dynamically linked; the distroless/static image has no libc for it"
  fi
  readelf -d "$agent" | grep -q 'NEEDED.*libc\.so' || die "$agent does not link glibc; expected a glibc build"
  if readelf -d "$agent" | grep -q 'NEEDED.*nvidia'; then
    die "$agent links NVML at build time; it must load libnvidia-ml.so.1 at run time"
  fi
  "$operator" --help >/dev/null || die "$operator --help failed"
  "$operator" crd >/dev/null || die "$operator crd failed"
  "$agent" --help >/dev/null || die "$agent --help failed"
  log "verified: $operator is static ($(du -h "$operator" | cut -f1)), $agent links glibc, not NVML ($(du -h "$agent" | cut -f1)); both start"
}

target_dir() {
  if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
    printf '%s' "$CARGO_TARGET_DIR"
  else
    printf '%s' "$REPO_ROOT/target"
  fi
}

main() {
  [[ $# == 2 ]] || usage
  case $1 in
    --prepare) prepare "$2"; return ;;
    --verify) verify "$2"; return ;;
  esac
  local what=$1 out=$2
  [[ $what == operator || $what == node-agent ]] || usage
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  cd "$REPO_ROOT"
  case $what in
    operator) build_operator "$out" ;;
    node-agent) build_node_agent "$out" ;;
    *) usage ;;
  esac
  log "built $out/$([[ $what == operator ]] && echo model-operator || echo node-agent)"
}

main "$@"

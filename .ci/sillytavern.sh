#!/usr/bin/env bash
# Install what the real-SillyTavern e2e test (tests/e2e) needs, reusing caches:
#   - Debian's chromium (apt-get, only when missing; Playwright downloads no browser),
#   - SillyTavern 1.19.0 from the npm registry (npm pack + npm install --omit=dev) in
#     ~/.cache/kvtui-e2e/sillytavern-1.19.0 (or $KVTUI_E2E_SILLYTAVERN), kept between runs,
#   - the Python playwright package into the given virtual environment (default .venv).
# Usage: .ci/sillytavern.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=1.19.0
VENV=${1:-.venv}
ST_DIR=${KVTUI_E2E_SILLYTAVERN:-$HOME/.cache/kvtui-e2e/sillytavern-$ST_VERSION}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# -- chromium ----------------------------------------------------------------------------------
if ! command -v chromium >/dev/null 2>&1 && [ -z "${KVTUI_E2E_CHROMIUM:-}" ]; then
    echo "sillytavern.sh: installing chromium (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# -- node ----------------------------------------------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "sillytavern.sh: SillyTavern $ST_VERSION needs Node.js >= 20 with npm; install it first." >&2
    exit 1
fi
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
if [ "$NODE_MAJOR" -lt 20 ]; then
    echo "sillytavern.sh: Node.js $(node --version) is too old for SillyTavern $ST_VERSION (needs >= 20)." >&2
    exit 1
fi

# -- SillyTavern ---------------------------------------------------------------------------------
if [ -f "$ST_DIR/.kvtui-e2e-ready" ] && [ -f "$ST_DIR/server.js" ] && [ -d "$ST_DIR/node_modules" ]; then
    echo "sillytavern.sh: SillyTavern $ST_VERSION cached at $ST_DIR"
else
    echo "sillytavern.sh: installing SillyTavern $ST_VERSION into $ST_DIR"
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    (cd "$WORK" && npm pack --silent "sillytavern@$ST_VERSION" >/dev/null)
    tar -xzf "$WORK"/sillytavern-"$ST_VERSION".tgz -C "$WORK"
    (cd "$WORK/package" && npm install --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
    rm -rf "$ST_DIR"
    mkdir -p "$(dirname "$ST_DIR")"
    mv "$WORK/package" "$ST_DIR"
    touch "$ST_DIR/.kvtui-e2e-ready"
fi

# -- Playwright (Python) -------------------------------------------------------------------------
if ! "$VENV/bin/python" -c 'import playwright.sync_api' >/dev/null 2>&1; then
    echo "sillytavern.sh: installing the Python playwright package into $VENV"
    "$VENV/bin/pip" install -q playwright
fi
echo "sillytavern.sh: ready (SillyTavern $ST_DIR, chromium $(command -v chromium || echo "${KVTUI_E2E_CHROMIUM:-}"))"

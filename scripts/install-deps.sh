#!/usr/bin/env bash
# Installs the system packages Patina builds and tests against, on Debian bookworm.
# Idempotent: quiet and fast when everything is already there.
set -euo pipefail

packages=(
  pkg-config
  libsqlite3-dev
  libngtcp2-dev
  libngtcp2-crypto-gnutls-dev
  libgnutls28-dev
  libnghttp3-dev
  libssl-dev
  openssl
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The interoperability test runs Python's aioquic (another QUIC and TLS stack)
# against our listener.
if ! python3 -c "import aioquic" 2>/dev/null; then
  echo "installing: aioquic (PyPI)"
  python3 -m pip install -q aioquic >/dev/null 2>&1 \
    || python3 -m pip install -q --break-system-packages aioquic >/dev/null 2>&1 \
    || echo "warning: could not install aioquic; the QUIC interop test will be skipped"
fi

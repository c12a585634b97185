#!/usr/bin/env bash
# Installs (idempotently, as root) the Debian packages the network-namespace tiers and the live
# demo run: iptables (the capture rules), iproute2 (namespaces, veths, the bridge), util-linux's
# setpriv (the proxy as UID 1337) and python3 (the capture tests' client). Without root it says
# what is missing and exits 0: the root-only parts then fail or skip with their own message.
set -euo pipefail

missing=()
command -v iptables-restore >/dev/null || missing+=(iptables)
command -v ip >/dev/null || missing+=(iproute2)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "system-packages.sh: missing ${missing[*]}; run as root to install them" >&2
fi

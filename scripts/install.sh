#!/usr/bin/env bash
# Install zoe-edge as a systemd service on a board (run as root from a checkout). Idempotent:
# running it again updates the code and the unit and keeps /etc/zoe-edge as the owner left it.
#   sudo ./scripts/install.sh [--prefix /opt/zoe-edge]
set -euo pipefail
prefix=/opt/zoe-edge
[ "${1:-}" = "--prefix" ] && prefix=$2
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
src=$(cd "$(dirname "$0")/.." && pwd)

id zoe-edge >/dev/null 2>&1 || useradd --system --home-dir /var/lib/zoe-edge --shell /usr/sbin/nologin zoe-edge
for group in video render; do
  getent group "$group" >/dev/null && usermod -aG "$group" zoe-edge
done

mkdir -p "$prefix"
# copy the tree without build outputs; the venv is made in place so its paths are right
tar -C "$src" --exclude=.venv --exclude=.state --exclude=.git -cf - . | tar -C "$prefix" -xf -
(cd "$prefix" && ZOE_STATE_DIR=/var/lib/zoe-edge ./scripts/setup)
chown -R zoe-edge:zoe-edge /var/lib/zoe-edge 2>/dev/null || true

install -d -m 0755 /etc/zoe-edge
[ -f /etc/zoe-edge/models.yaml ] || install -m 0644 "$src/models.yaml" /etc/zoe-edge/models.yaml
[ -f /etc/zoe-edge/zoe-edge.env ] || install -m 0600 "$src/systemd/zoe-edge.env.example" /etc/zoe-edge/zoe-edge.env

sed "s|/opt/zoe-edge|$prefix|g" "$src/systemd/zoe-edge.service" > /etc/systemd/system/zoe-edge.service
systemd-analyze verify /etc/systemd/system/zoe-edge.service
systemctl daemon-reload
systemctl enable --now zoe-edge.service
echo "zoe-edge installed: systemctl status zoe-edge; config in /etc/zoe-edge"

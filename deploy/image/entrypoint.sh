#!/bin/sh
# The image's entrypoint: runs linkdns with the least privilege its mode needs.
# - node-local mode (-localip given): as it was started (root, with NET_ADMIN in the stock
#   NodeLocal DNSCache DaemonSet): it creates an interface and iptables/ebtables rules.
# - otherwise, when started as root: as the unprivileged user 10001, keeping only
#   NET_BIND_SERVICE (as an ambient capability) so it can still listen on port 53.
# - started as another user already (docker run --user, runAsUser): as that user.
set -eu
if [ "$(id -u)" != 0 ]; then
    exec linkdns "$@"
fi
for arg in "$@"; do
    case "$arg" in
        -localip | -localip=* | --localip | --localip=*) exec linkdns "$@" ;;
    esac
done
exec setpriv --reuid=10001 --regid=10001 --clear-groups --no-new-privs \
    --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service \
    -- linkdns "$@"

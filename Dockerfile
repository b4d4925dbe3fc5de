# linkdns image: python slim + the package. The entrypoint (deploy/image/entrypoint.sh) picks
# the privileges by mode, so the stock NodeLocal DNSCache DaemonSet runs it unchanged:
# - node-local mode (-localip): stays root, with the NET_ADMIN the DaemonSet adds, to create the
#   interface and the iptables/ebtables rules, as node-cache does;
# - otherwise: drops to the unprivileged user 10001, keeping only NET_BIND_SERVICE (port 53).
# Not built in CI (no container engine or base images there); tests/test_deploy_image.py lints
# this file, checks what it copies and runs the entrypoint.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
# ip, iptables/ip6tables and ebtables for node-local mode, as in node-cache's image.
# DL3008 (pin apt versions): the slim base image moves with Debian's point releases, whose
# archive drops the old versions, so pinned versions break the build after the next release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 iptables ebtables \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin linkdns
COPY --from=build /install /usr/local
COPY Corefile.example /etc/linkdns/Corefile
COPY deploy/image/entrypoint.sh /usr/local/bin/linkdns-entrypoint
EXPOSE 53/udp 53/tcp 9253 8080 8181
ENTRYPOINT ["linkdns-entrypoint"]
CMD ["-conf", "/etc/linkdns/Corefile"]

# linkdns image: python slim + the package. Two ways to run it:
# - plain forwarder (no -localip): as the unprivileged user below; a Corefile on a port below
#   1024 (53) then needs the NET_BIND_SERVICE capability, e.g. `--cap-add NET_BIND_SERVICE`
#   with `docker run --user 0`, or a port >= 1024 (the default Corefile uses 1053).
# - node-local mode (-localip, the DaemonSet in deploy/): as root (runAsUser: 0) with NET_ADMIN
#   added, to create the interface and the iptables/ebtables rules, as node-cache does.
# Not built in CI (no container engine there); tests/test_deploy_image.py lints this file.
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
USER 10001
EXPOSE 53/udp 53/tcp 9253 8080 8181
ENTRYPOINT ["linkdns"]
CMD ["-conf", "/etc/linkdns/Corefile"]

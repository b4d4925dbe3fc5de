# linkdns image: python slim + the package; runs as a DaemonSet with hostNetwork.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
# node-local mode (-localip) sets up its interface and iptables rules with these, as node-cache
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /install /usr/local
COPY Corefile.example /etc/linkdns/Corefile
EXPOSE 53/udp 53/tcp 9253 8080 8181
ENTRYPOINT ["linkdns"]
CMD ["-conf", "/etc/linkdns/Corefile"]

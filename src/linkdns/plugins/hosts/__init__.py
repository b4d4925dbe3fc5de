"""hosts: serve A, AAAA and PTR records from a hosts(5) file and Corefile lines.

Compatible with CoreDNS's *hosts* plugin: ``setup`` parses the directive, ``hostsfile``
parses the data, ``handler`` answers and re-reads a changed file, ``metrics`` exports
``coredns_hosts_entries`` and ``coredns_hosts_reload_timestamp_seconds``.
"""

from linkdns.plugins.hosts import setup as setup

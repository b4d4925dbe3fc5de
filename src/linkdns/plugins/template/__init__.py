"""template: answer queries from Go-style templates of resource records.

Compatible with CoreDNS's *template* plugin: ``setup`` parses the directives, ``gotmpl``
compiles and renders the template subset, ``handler`` matches queries and builds the reply,
``metrics`` exports the ``coredns_template_*`` counters.
"""

from linkdns.plugins.template import setup as setup

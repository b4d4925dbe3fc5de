"""template over real sockets: dnspython client -> linkdns (cache? -> template -> forward) -> FakeUpstream."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from fakeupstream import FakeUpstream
from harness import Running

from linkdns.config import build_sites
from linkdns.corefile import parse_corefile
from linkdns.errors import ConfigError
from linkdns.plugins.template.gotmpl import Data, Template, TemplateError
from linkdns.plugins.template.setup import TemplateConfig

IP_A = """template IN A example {
  match (^|[.])ip-(?P<a>[0-9]*)-(?P<b>[0-9]*)-(?P<c>[0-9]*)-(?P<d>[0-9]*)[.]example[.]$
  answer "{{ .Name }} 60 IN A {{ .Group.a }}.{{ .Group.b }}.{{ .Group.c }}.{{ .Group.d }}"
  fallthrough
 }"""

PTR = """template IN PTR in-addr.arpa {
  match ^(?P<d>[0-9]*)[.](?P<c>[0-9]*)[.](?P<b>[0-9]*)[.](?P<a>[0-9]*)[.]in-addr[.]arpa[.]$
  answer "{{ .Name }} 60 IN PTR ip-{{ index .Group \\"a\\" }}-{{ .Group.b }}-{{ .Group.c }}-{{ index .Match 1 }}.example."
 }"""

INVALID = """template ANY ANY invalid {
  rcode NXDOMAIN
  authority "invalid. 60 {{ .Class }} SOA ns.invalid. hostmaster.invalid. (1 60 60 60 60)"
 }"""


def corefile(templates: str, up: FakeUpstream, before: str = "", key: str = ".:0") -> str:
    return f"{key} {{\n bind 127.0.0.1\n{before}\n {templates}\n forward . {up.addr}\n}}\n"


def answers(r: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in r.answer for rd in rrset]


def samples(srv: Running, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for m in srv.registry.collect()
            for s in m.samples if s.name == name}


# -- answers --------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [pytest.param(False, id="udp"), pytest.param(True, id="tcp")])
def test_answer_from_name_and_named_groups(up: FakeUpstream, tcp: bool) -> None:
    with Running(corefile(IP_A, up)) as srv:
        r = srv.query("host.IP-10-1-2-3.example.", "A", tcp=tcp)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    assert answers(r) == ["10.1.2.3"]
    assert r.answer[0].name.to_text() == "host.ip-10-1-2-3.example."  # .Name is lowercase
    assert r.answer[0].ttl == 60
    assert up.queries == []


def test_ptr_with_index_forms(up: FakeUpstream) -> None:
    with Running(corefile(PTR, up)) as srv:
        r = srv.query("4.3.2.1.in-addr.arpa.", "PTR")
    assert answers(r) == ["ip-1-2-3-4.example."]
    assert r.flags & dns.flags.AA


def test_nxdomain_with_authority_soa(up: FakeUpstream) -> None:
    with Running(corefile(INVALID, up)) as srv:
        r = srv.query("anything.invalid.", "AAAA")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    assert r.answer == []
    soa = r.authority[0]
    assert (soa.name.to_text(), soa.rdtype, soa.ttl) == ("invalid.", dns.rdatatype.SOA, 60)
    assert soa[0].to_text() == "ns.invalid. hostmaster.invalid. 1 60 60 60 60"
    assert up.queries == []


def test_several_answer_additional_and_authority_lines(up: FakeUpstream) -> None:
    t = """template IN MX example {
  answer "{{ .Name }} 60 IN MX 10 {{ .Name }}" "{{ .Name }} 60 IN MX 20 backup.example."
  additional "{{ .Name }} 60 IN A 10.0.0.1"
  authority "example. 60 IN NS ns0.example."
 }"""
    with Running(corefile(t, up)) as srv:
        r = srv.query("mail.example.", "MX")
    assert sorted(answers(r)) == ["10 mail.example.", "20 backup.example."]
    assert [rd.to_text() for rrset in r.additional for rd in rrset] == ["10.0.0.1"]
    assert [rd.to_text() for rrset in r.authority for rd in rrset] == ["ns0.example."]


@pytest.mark.parametrize("rcode", [
    pytest.param("SERVFAIL", id="servfail"),
    pytest.param("REFUSED", id="refused"),
])
def test_error_rcode_answers_plain_error(up: FakeUpstream, rcode: str) -> None:
    t = f'template IN A {{\n  rcode {rcode}\n  answer "{{{{ .Name }}}} 1 IN A 10.0.0.1"\n }}'
    with Running(corefile(t, up)) as srv:
        r = srv.query("x.example.", "A")
    assert r.rcode() == dns.rcode.from_text(rcode) and r.answer == []
    assert up.queries == []


def test_edns_client_gets_its_opt_and_big_answers_truncate(up: FakeUpstream) -> None:
    t = 'template IN TXT {\n  answer ' + " ".join(
        f'"{{{{ .Name }}}} 60 IN TXT {i:03d}{"x" * 60}"' for i in range(12)) + "\n }"
    with Running(corefile(t, up)) as srv:
        edns = srv.query("t.example.", "TXT", use_edns=0, payload=1232)
        small = srv.query("t.example.", "TXT")
        full = srv.query("t.example.", "TXT", tcp=True)
    assert edns.edns == 0 and len(answers(edns)) == 12
    assert small.flags & dns.flags.TC and len(answers(small)) < 12
    assert len(answers(full)) == 12


# -- what matches ---------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "qtype", "templated"), [
    pytest.param("IN A", "A", True, id="same-type"),
    pytest.param("IN A", "ANY", True, id="any-query-matches-a-template"),
    pytest.param("IN A", "AAAA", False, id="other-type"),
    pytest.param("ANY A", "A", True, id="any-class"),
    pytest.param("CH A", "A", False, id="other-class"),
])
def test_class_and_type_filter(up: FakeUpstream, head: str, qtype: str, templated: bool) -> None:
    # .Type/.Class name the query's, or the template's when the query asks for ANY
    t = f'template {head} {{\n  answer "{{{{ .Name }}}} 60 IN TXT {{{{ .Type }}}}-{{{{ .Class }}}}"\n }}'
    with Running(corefile(t, up)) as srv:
        r = srv.query("q.example.", qtype)
    assert (len(up.queries) == 0) is templated
    if templated:
        assert answers(r) == ['"A-IN"']


@pytest.mark.parametrize(("qname", "templated"), [
    pytest.param("a.example.org.", True, id="in-zone"),
    pytest.param("example.org.", True, id="apex"),
    pytest.param("a.example.net.", False, id="other-zone"),
])
def test_template_zones(up: FakeUpstream, qname: str, templated: bool) -> None:
    t = 'template IN A example.org {\n  answer "{{ .Name }} 60 IN TXT {{ .Zone }}"\n }'
    with Running(corefile(t, up)) as srv:
        r = srv.query(qname, "A")
    if templated:
        assert answers(r) == ['"example.org."']
    else:
        assert answers(r) == ["192.0.2.1"]


def test_default_zones_are_the_server_blocks(up: FakeUpstream) -> None:
    t = 'template IN A {\n  answer "{{ .Name }} 60 IN A 10.9.9.9"\n }'
    with Running(corefile(t, up, key="example.org:0")) as srv:
        assert answers(srv.query("x.example.org.", "A")) == ["10.9.9.9"]


def test_templates_tried_in_order(up: FakeUpstream) -> None:
    t = """template IN A {
  match ^first[.]
  answer "{{ .Name }} 60 IN A 10.0.0.1"
  fallthrough
 }
 template IN A {
  match [.]example[.]$
  answer "{{ .Name }} 60 IN A 10.0.0.2"
 }
 template IN A {
  answer "{{ .Name }} 60 IN A 10.0.0.3"
 }"""
    with Running(corefile(t, up)) as srv:
        assert answers(srv.query("first.example.", "A")) == ["10.0.0.1"]
        assert answers(srv.query("second.example.", "A")) == ["10.0.0.2"]
        # the second template's zone fits but its regex does not and it has no fallthrough
        r = srv.query("third.example.net.", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.answer == []
    assert up.queries == []


def test_first_matching_regex_fills_match(up: FakeUpstream) -> None:
    t = """template IN TXT {
  match ^(a)[.] ^(b)[.]
  answer "{{ .Name }} 60 IN TXT {{ index .Match 1 }}"
 }"""
    with Running(corefile(t, up)) as srv:
        assert answers(srv.query("b.example.", "TXT")) == ['"b"']


@pytest.mark.parametrize(("fall", "qname", "forwarded"), [
    pytest.param("fallthrough", "nomatch.example.", True, id="all-zones"),
    pytest.param("fallthrough example.net", "x.example.net.", True, id="listed-zone"),
    pytest.param("fallthrough example.net", "x.example.", False, id="other-zone"),
    pytest.param("", "nomatch.example.", False, id="none"),
])
def test_fallthrough_to_forward(up: FakeUpstream, fall: str, qname: str,
                                forwarded: bool) -> None:
    t = f'template IN A {{\n  match ^ip[.]\n  answer "{{{{ .Name }}}} 60 IN A 10.0.0.1"\n  {fall}\n }}'
    with Running(corefile(t, up)) as srv:
        r = srv.query(qname, "A")
        assert answers(srv.query("ip.example.", "A")) == ["10.0.0.1"]
    if forwarded:
        assert answers(r) == ["192.0.2.1"] and len(up.queries) == 1
    else:
        assert r.rcode() == dns.rcode.NXDOMAIN and up.queries == []


def test_cache_in_front_stores_template_answers(up: FakeUpstream) -> None:
    with Running(corefile(IP_A, up, before=" cache 30")) as srv:
        first = srv.query("ip-10-0-0-7.example.", "A")
        second = srv.query("ip-10-0-0-7.example.", "A")
        matches = samples(srv, "coredns_template_matches_total")
    assert answers(first) == answers(second) == ["10.0.0.7"]
    assert list(matches.values()) == [1.0]  # the second answer came from the cache


# -- metrics --------------------------------------------------------------------------------


def test_match_metric_labels(up: FakeUpstream) -> None:
    with Running(corefile(IP_A, up)) as srv:
        srv.query("ip-1-2-3-4.example.", "A")
        srv.query("ip-1-2-3-5.example.", "A")
        got = samples(srv, "coredns_template_matches_total")
    assert got == {(("class", "IN"), ("server", f"dns://127.0.0.1:{srv.port}"),
                    ("type", "A"), ("view", ""), ("zone", "example.")): 2.0}


@pytest.mark.parametrize(("answer", "metric", "template"), [
    pytest.param('"{{ .Name }} 60 IN A 300.0.0.1"', "coredns_template_rr_failures_total",
                 "{{.Name}} 60 IN A 300.0.0.1", id="rr-does-not-parse"),
    pytest.param('"{{ .Name }} 60 IN A 10.0.0.{{index .Match 3}}"',
                 "coredns_template_template_failures_total",
                 "{{.Name}} 60 IN A 10.0.0.{{index .Match 3}}", id="index-out-of-range"),
])
def test_failures_answer_servfail_and_count(up: FakeUpstream, answer: str, metric: str,
                                            template: str) -> None:
    t = f"template IN A {{\n  answer {answer}\n }}"
    with Running(corefile(t, up)) as srv:
        r = srv.query("x.example.", "A")
        got = samples(srv, metric)
    assert r.rcode() == dns.rcode.SERVFAIL
    assert got == {(("class", "IN"), ("section", "answer"),
                    ("server", f"dns://127.0.0.1:{srv.port}"), ("template", template),
                    ("type", "A"), ("view", ""), ("zone", ".")): 1.0}


# -- configuration --------------------------------------------------------------------------


def parse(text: str) -> list[TemplateConfig]:
    cfg = build_sites(parse_corefile(text))[0].plugins["template"]
    assert isinstance(cfg, list)
    return cfg


def test_defaults_and_several_directives() -> None:
    a, b = parse('.:53 {\n template ANY ANY {\n  rcode NXDOMAIN\n }\n'
                 ' template IN AAAA Example.ORG {\n  match ^x ^y\n  fallthrough a.org\n'
                 '  answer "{{ .Name }} 1 IN AAAA ::1"\n }\n}\n')
    assert (a.qclass, a.qtype, a.zones, a.rcode, a.fall) == (255, 255, None, 3, None)
    assert [r.pattern for r in a.regex] == [".*"]
    assert (b.qclass, b.qtype, b.zones, b.rcode, b.fall) == (1, 28, ("example.org.",), 0,
                                                              ("a.org.",))
    assert [r.pattern for r in b.regex] == ["^x", "^y"]
    assert [t.text for t in b.answer] == ["{{.Name}} 1 IN AAAA ::1"]


@pytest.mark.parametrize(("text", "line", "msg"), [
    pytest.param("template", 2, "Wrong argument count", id="no-class"),
    pytest.param("template IN", 2, "Wrong argument count", id="no-type"),
    pytest.param("template XX A", 2, "invalid query class XX", id="bad-class"),
    pytest.param("template IN BOGUS", 2, "invalid RR class BOGUS", id="bad-type"),
    pytest.param("template IN A {\n  match ^(x\n }", 3, "could not parse regex: ^(x",
                 id="bad-regex"),
    pytest.param("template IN A {\n  match\n }", 3, "Wrong argument count", id="match-empty"),
    pytest.param("template IN A {\n  rcode NOPE\n }", 3, "unknown rcode NOPE", id="bad-rcode"),
    pytest.param("template IN A {\n  rcode BADVERS\n }", 3, "unknown rcode BADVERS",
                 id="extended-rcode"),
    pytest.param("template IN A {\n  rcode\n }", 3, "Wrong argument count", id="rcode-empty"),
    pytest.param("template IN A {\n  answer\n }", 3, "Wrong argument count", id="answer-empty"),
    pytest.param('template IN A {\n  answer "{{ .Name | printf }} 1 IN A 1.1.1.1"\n }', 3,
                 "could not compile template: answer, unsupported template action",
                 id="unsupported-action"),
    pytest.param('template IN A {\n  authority "{{ .Name"\n }', 3,
                 "could not compile template: authority, unclosed action", id="unclosed"),
    pytest.param("template IN A {\n  ederror 15\n }", 3, "'ederror' is not supported",
                 id="ederror"),
    pytest.param("template IN A {\n  anwser x\n }", 3, "unknown property 'anwser'",
                 id="typo"),
    pytest.param("template IN A bad:zone", 2, "bad port", id="bad-zone"),
])
def test_config_errors_name_file_and_line(text: str, line: int, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(f".:53 {{\n {text}\n}}\n")
    assert str(e.value).startswith(f"Corefile:{line} - plugin/template: {msg}")


@pytest.mark.parametrize(("pattern", "name", "group"), [
    pytest.param(r"^(?<h>[a-z]+)[.]", "web.example.", "web", id="go-named-group"),
    pytest.param(r"(?P<h>[a-z]+)[.]example[.]\z", "web.example.", "web", id="backslash-z"),
])
def test_go_regex_forms(up: FakeUpstream, pattern: str, name: str, group: str) -> None:
    t = f'template IN TXT {{\n  match "{pattern}"\n  answer "{{{{ .Name }}}} 1 IN TXT {{{{ .Group.h }}}}"\n }}'
    with Running(corefile(t, up)) as srv:
        assert answers(srv.query(name, "TXT")) == [f'"{group}"']


# -- the renderer ---------------------------------------------------------------------------


DATA = Data(name="a.example.", zone="example.", cls="IN", type="A", remote="127.0.0.1",
            match=("a.example.", "a"), group={"0": "a.example.", "1": "a", "x": "a"})


@pytest.mark.parametrize(("source", "want"), [
    pytest.param("{{.Name}} {{ .Zone }} {{.Class}} {{.Type}} {{.Remote}}",
                 "a.example. example. IN A 127.0.0.1", id="fields"),
    pytest.param("{{ .Group.x }}/{{ index .Group \"x\" }}/{{ index .Group `1` }}", "a/a/a",
                 id="group-forms"),
    pytest.param("{{ .Group.missing }}", "<no value>", id="missing-group-field"),
    pytest.param('{{ index .Group "missing" }}', "", id="missing-group-index"),
    pytest.param("no actions }} here", "no actions }} here", id="literal"),
])
def test_renderer(source: str, want: str) -> None:
    assert Template(source).render(DATA) == want


@pytest.mark.parametrize("source", [
    pytest.param("{{ $x := 1 }}", id="variable"),
    pytest.param("{{ if .Name }}x{{ end }}", id="if"),
    pytest.param("{{ .Message }}", id="message"),
    pytest.param('{{ .Meta "kubernetes/client-namespace" }}', id="meta"),
    pytest.param("{{- .Name -}}", id="trim-markers"),
    pytest.param("{{ printf \"%s\" .Name }}", id="function"),
])
def test_renderer_refuses_other_syntax(source: str) -> None:
    with pytest.raises(TemplateError, match="unsupported template action"):
        Template(source)

"""api/urls.py: template URLs checked in the form servers read them; addresses; redaction."""

from __future__ import annotations

import pytest

from rbd_operator.api import urls
from rbd_operator.api.errors import SpecError
from rbd_operator.api.storage import parse_storage
from rbd_operator.api.urls import UrlRefused

PREFIXES = ("http://h.example/templates/", "https://img.example:8443/pub", "http://127.0.0.1:8080/",
            "http://[2001:db8::1]/t/")


@pytest.mark.parametrize("url", [
    "http://h.example/templates/debian.qcow2",
    "http://h.example/templates/sub/dir/x.img",
    "http://h.example/templates/x.img?X-Amz-Signature=abc%2Fdef&a=b",
    "https://img.example:8443/pub",
    "https://img.example:8443/pub/x",
    "http://127.0.0.1:8080/x.raw",
    "http://[2001:db8::1]/t/x",
    "http://h.example/templates/a%20b.img",
    "http://h.example/templates/~user/x",
])
def test_canonical_urls_under_a_prefix_are_admitted(url):
    parsed = urls.admitted(url, PREFIXES)
    assert str(parsed) == url


@pytest.mark.parametrize("url,canonical", [
    ("http://h.example/templates/../private/x", "http://h.example/private/x"),
    ("http://h.example/templates/%2e%2e/private/x", "http://h.example/private/x"),
    ("http://h.example/templates/%2E%2e/private/x", "http://h.example/private/x"),
    ("http://h.example/templates/.%2e/private/x", "http://h.example/private/x"),
    ("http://h.example/templates/./x", "http://h.example/templates/x"),
    ("http://h.example/templates/a/..", "http://h.example/templates/"),
    ("http://h.example/templates//x", "http://h.example/templates/x"),
    ("http://h.example//templates/x", "http://h.example/templates/x"),
    ("http://h.example/templates\\..\\private\\x", "http://h.example/private/x"),
    ("http://h.example/templates\\x", "http://h.example/templates/x"),
    ("http://h.example/templates/x#frag", "http://h.example/templates/x"),
    ("http://h.example/templates/x#", "http://h.example/templates/x"),
    ("http://h.example/templates/%78", "http://h.example/templates/x"),
    ("http://h.example/templates/%7e", "http://h.example/templates/~"),
    ("http://h.example/templates/a%3ab", "http://h.example/templates/a%3Ab"),
    ("HTTP://h.example/templates/x", "http://h.example/templates/x"),
    ("http://H.Example/templates/x", "http://h.example/templates/x"),
    ("http://h.example:80/templates/x", "http://h.example/templates/x"),
    ("https://img.example:443/pub/x", "https://img.example/pub/x"),
    ("http://h.example", "http://h.example/"),
    ("http://h.example./templates/x", "http://h.example/templates/x"),
    ("http://[2001:DB8::1]/t/x", "http://[2001:db8::1]/t/x"),
    ("http://[2001:db8:0::1]/t/x", "http://[2001:db8::1]/t/x"),
])
def test_urls_that_do_not_survive_normalisation_are_refused(url, canonical):
    assert str(urls.parse(url)) == canonical
    with pytest.raises(UrlRefused, match="not in the form a server reads it"):
        urls.check(url)
    with pytest.raises(UrlRefused):
        urls.admitted(url, PREFIXES + ("http://h.example/",))


@pytest.mark.parametrize("url", [
    "http://user@h.example/templates/x",
    "http://h.example@evil.example/templates/x",
    "http://user:pw@h.example/templates/x",
    "http://h.example/templates/..%2Fprivate/x",
    "http://h.example/templates/..%2fprivate/x",
    "http://h.example/templates/..%5Cprivate/x",
    "http://h.example/templates/x%00.img",
    "http://h.example/templates/..;/private/x",
    "http://h.example/templates/.;x/y",
    "http://h.example/templates/%zz",
    "http://h.example/templates/%4",
    "http://h.example/templates/x?a=%g1",
    "ftp://h.example/templates/x",
    "file:///etc/shadow",
    "gopher://h.example/templates/x",
    "javascript:alert(1)",
    "//h.example/templates/x",
    "http:///templates/x",
    "http://h.example:0/templates/x",
    "http://h.example:65536/templates/x",
    "http://h.example:/templates/x",
    "http://h.example:8o/templates/x",
    "http://127.1/templates/x",
    "http://0x7f.0.0.1/templates/x",
    "http://2130706433/templates/x",
    "http://017.0.0.1/templates/x",
    "http://h.123/templates/x",
    "http://[fe80::1%25eth0]/t/x",
    "http://[::1/t/x",
    "http://[zz::1]/t/x",
    "http://h_x.example/templates/x",
    "http://h.example/templates/x y",
    "http://h.example/templates/\u00e9",
    "http://h.example/templates/x\n",
    "",
    "http://" + "a" * 2000 + "/x",
])
def test_hostile_urls_are_refused(url):
    with pytest.raises(UrlRefused):
        urls.admitted(url, PREFIXES + ("http://h.example/",))


@pytest.mark.parametrize("url,prefix,admitted", [
    ("http://h/templates/x", "http://h/templates", True),
    ("http://h/templates", "http://h/templates", True),
    ("http://h/templates?sig=1", "http://h/templates", True),
    ("http://h/templates-private/x", "http://h/templates", False),
    ("http://h/templates.qcow2", "http://h/templates", False),
    ("http://h/templates-private/x", "http://h/templates/", False),
    ("http://h/templates/x", "http://h/templates/", True),
    ("http://h/templates", "http://h/templates/", False),
    ("http://h/t/deb-12.qcow2", "http://h/t/deb", False),
    ("http://h:8080/templates/x", "http://h/templates/", False),
    ("https://h/templates/x", "http://h/templates/", False),
    ("http://h.evil/templates/x", "http://h/templates/", False),
    ("http://hh/templates/x", "http://h/templates/", False),
    ("http://h/anything", "http://h/", True),
])
def test_prefixes_match_at_segment_boundaries(url, prefix, admitted):
    assert urls.under(urls.check(url), urls.check_prefix(prefix)) is admitted


@pytest.mark.parametrize("prefix", ["http://h/t/?x=1", "http://h/t/#f", "http://h/a/../t/", "http://H/t/",
                                    "http://h//t/", "http://u@h/t/", "http://h:80/t/"])
def test_non_canonical_prefixes_are_refused_by_the_spec(prefix):
    with pytest.raises(UrlRefused):
        urls.check_prefix(prefix)
    spec = {"cluster": {"monitors": ["10.0.0.1:6789"], "adminSecretRef": {"name": "a"}},
            "imports": {"allowedURLPrefixes": [prefix]}}
    with pytest.raises(SpecError, match="allowedURLPrefixes"):
        parse_storage("s", spec)


def test_a_non_canonical_prefix_admits_nothing():
    with pytest.raises(UrlRefused):
        urls.admitted("http://h/t/x", ("http://h//t/", "http://H/t/"))


def test_stall_timeout_is_parsed_with_a_default_and_bounds():
    base = {"cluster": {"monitors": ["10.0.0.1:6789"], "adminSecretRef": {"name": "a"}},
            "imports": {"allowedURLPrefixes": ["http://h/t/"]}}
    assert parse_storage("s", base).import_stall_timeout == 120
    assert parse_storage("s", {**base, "imports": {"stallTimeout": "10s"}}).import_stall_timeout == 10
    assert parse_storage("s", {**base, "imports": {"stallTimeout": "1h"}}).import_stall_timeout == 3600
    for bad in ("1s", "2h", "soon", 30, ""):
        with pytest.raises(SpecError, match="stallTimeout"):
            parse_storage("s", {**base, "imports": {"stallTimeout": bad}})


@pytest.mark.parametrize("address,url,problem", [
    ("127.0.0.1", "http://h/x", "loopback"),
    ("127.8.9.10", "http://h/x", "loopback"),
    ("::1", "http://h/x", "loopback"),
    ("::ffff:127.0.0.1", "http://h/x", "loopback"),
    ("169.254.169.254", "http://h/x", "link-local"),
    ("::ffff:169.254.169.254", "http://h/x", "link-local"),
    ("fe80::1", "http://h/x", "link-local"),
    ("fe80::1%2", "http://h/x", "link-local"),
    ("0.0.0.0", "http://h/x", "unspecified"),
    ("0.1.2.3", "http://h/x", "unspecified"),
    ("::", "http://h/x", "unspecified"),
    ("224.0.0.1", "http://h/x", "multicast"),
    ("ff02::1", "http://h/x", "multicast"),
    ("10.1.2.3", "http://h/x", None),
    ("192.168.1.1", "http://h/x", None),
    ("93.184.216.34", "http://h/x", None),
    ("2001:db8::1", "http://h/x", None),
    ("127.0.0.1", "http://127.0.0.1:8080/x", None),       # the URL (and so its prefix) names it
    ("169.254.169.254", "http://169.254.169.254/x", None),
    ("::1", "http://[::1]/x", None),
    ("127.0.0.2", "http://127.0.0.1/x", "loopback"),      # named literally: only that address
])
def test_address_classes(address, url, problem):
    got = urls.address_problem(address, urls.check(url))
    assert (problem is None and got is None) or (problem is not None and problem in (got or ""))


@pytest.mark.parametrize("url,shown", [
    ("http://h/t/x.img?X-Amz-Signature=secret", "http://h/t/x.img?…"),
    ("http://h/t/x.img?", "http://h/t/x.img?…"),
    ("http://h/t/x.img#secret", "http://h/t/x.img"),
    ("http://user:secret@h/t/x", "http://…@h/t/x"),
    ("http://h/t/x", "http://h/t/x"),
    ("not a url?secret", "not a url?…"),
])
def test_redact(url, shown):
    assert urls.redact(url) == shown
    assert "secret" not in urls.redact(url)


def test_redact_text_in_free_text_and_reprs():
    text = ("Creation is in progress: {'spec': {'source': {'url': 'https://h/t/x?X-Amz-Signature=s3cr3t&b=c'}}} "
            '{"url":"http://h/t/y?token=s3cr3t"} and http://h/t/z#s3cr3t, http://h/plain')
    out = urls.redact_text(text)
    assert "s3cr3t" not in out
    assert "https://h/t/x?…" in out and "http://h/t/y?…" in out and "http://h/plain" in out


def test_import_step_describe_redacts_its_url():
    from rbd_operator.reconcile.actions import ImportImage
    step = ImportImage("disk", url="http://h/t/x?X-Amz-Signature=s3cr3t", prefixes=("http://h/t/",))
    assert "s3cr3t" not in step.describe() and "http://h/t/x?…" in step.describe()


def test_spec_url_refusal_message_is_redacted():
    from rbd_operator.api.image import parse_image
    with pytest.raises(SpecError) as err:
        parse_image("d", {"storage": "s", "source": {"url": "http://h/t/x y?sig=s3cr3t"}})
    assert "s3cr3t" not in err.value.message


@pytest.mark.parametrize("url", ["https://t.example/templates/../private/x", "https://t.example/templates/%2e%2e/x",
                                 "https://t.example/templates-private/x", "https://t.example/templates//x"])
def test_the_plan_refuses_non_canonical_or_foreign_urls_before_fetching(url):
    from rbd_operator.api.errors import Refused
    from rbd_operator.api.image import parse_image
    from rbd_operator.reconcile.image_plan import plan_image
    from rbd_operator.reconcile.ownership import ImageOwner
    spec = parse_image("disk", {"storage": "s", "source": {"url": url}})
    with pytest.raises(Refused) as err:
        plan_image(spec, None, ImageOwner("vms", "disk", "uid-1", "c", "n"), import_prefixes=("https://t.example/templates",))
    assert err.value.reason == "ImportNotAllowed" and "nothing was fetched" in err.value.message


def test_the_plan_carries_the_stall_timeout():
    from rbd_operator.api.image import parse_image
    from rbd_operator.reconcile.image_plan import plan_image
    from rbd_operator.reconcile.ownership import ImageOwner
    spec = parse_image("disk", {"storage": "s", "source": {"url": "https://t.example/templates/x"}})
    step = plan_image(spec, None, ImageOwner("vms", "disk", "uid-1", "c", "n"),
                      import_prefixes=("https://t.example/templates",), import_stall_timeout=17)[0]
    assert step.stall_timeout == 17 and step.url == "https://t.example/templates/x"

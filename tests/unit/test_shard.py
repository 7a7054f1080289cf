"""Shard selection (reconcile/shard.py): names, selectors, peering and Lease names, messages; the CLI flag."""

import pytest

from rbd_operator.reconcile import shard


@pytest.mark.parametrize("value", [None, "", "  "])
def test_no_shard_means_no_filter(value):
    assert shard.parse_shard(value) is None
    assert shard.selector(None) is None
    assert shard.selectors(None) == {}
    assert shard.belongs({}, None) and shard.belongs({shard.LABEL: "x"}, None)
    assert shard.peering_name("rbd-operator", None) == "rbd-operator"
    assert shard.peering_name("", None) is None
    assert shard.lease_name("rbd-operator-disruption", None) == "rbd-operator-disruption"


@pytest.mark.parametrize("value", ["a", "eu-1", "0", "a" * shard.MAX_LENGTH, " b2 "])
def test_valid_names(value):
    assert shard.parse_shard(value) == value.strip()


@pytest.mark.parametrize("value", ["A", "-a", "a-", "a_b", "a.b", "a b", "a=b", "a,b", "!a", "a" * (shard.MAX_LENGTH + 1),
                                   "a\nb", "é"])
def test_invalid_names_are_refused(value):
    """A name that is not a plain DNS label could widen the selector (',', '!', '=') or break the peering name."""
    with pytest.raises(shard.ShardError):
        shard.parse_shard(value)


def test_every_kind_is_selected_by_the_shard_label():
    chosen = shard.selectors("eu-1")
    assert set(chosen) == {"rbdstorages", "hypervisornodes", "rbdimages", "rbdsnapshots", "rbdsnapshotschedules"}
    assert set(chosen.values()) == {"rbd-operator.io/shard=eu-1"}
    assert shard.UNSHARDED == "!rbd-operator.io/shard"


def test_belongs_only_to_the_labelled_shard():
    assert shard.belongs({shard.LABEL: "a"}, "a")
    assert not shard.belongs({shard.LABEL: "b"}, "a")
    assert not shard.belongs({}, "a") and not shard.belongs(None, "a")
    assert not shard.belongs({"other": "a"}, "a")


def test_each_shard_has_its_own_peering_and_lease():
    assert shard.peering_name("rbd-operator", "a") == "rbd-operator-a"
    assert shard.peering_name("rbd-operator", "a") != shard.peering_name("rbd-operator", "b")
    assert shard.peering_name(None, "a") is None  # no peering: standalone, sharded or not
    assert shard.lease_name("rbd-operator-disruption", "a") == "rbd-operator-disruption-a"


def test_messages_name_the_shard_and_the_label():
    assert shard.missing_storage("s", None) == "RbdStorage 's' does not exist (waiting for it)"
    text = shard.missing_storage("s", "a")
    assert "shard 'a'" in text and shard.LABEL in text
    assert shard.missing_image("ns", "i", None) == "RbdImage ns/i does not exist (waiting for it)"
    assert "shard 'a'" in shard.missing_image("ns", "i", "a")
    text = shard.describe_unlabelled("rbdimages", ["ns/b", "ns/a"], more=True)
    assert text.startswith("at least 2 rbdimages") and "ns/a, ns/b, ..." in text and shard.LABEL in text
    assert not shard.describe_unlabelled("rbdimages", ["x"], more=False).startswith("at least")


def test_cli_refuses_a_bad_shard(capsys, monkeypatch):
    from rbd_operator.__main__ import main
    monkeypatch.setenv("RBD_OPERATOR_METRICS", "none")  # main sets it: restored after the test
    with pytest.raises(SystemExit) as exc:
        main(["--shard", "a,b"])
    assert exc.value.code == 2
    assert "not a valid shard name" in capsys.readouterr().err


def test_kopf_puts_the_shard_selector_on_our_kinds_only(monkeypatch):
    """handlers/shard.py gives kopf the selector; kopf's list and watch requests carry what `collect` returns."""
    import asyncio

    import kopf
    from kopf._cogs.structs import references

    from rbd_operator.adapters import shard as adapter
    from rbd_operator.handlers import shard as wiring

    def resource(group, plural, namespaced=True):
        return references.Resource(group, "v1alpha1" if group else "v1", plural, namespaced=namespaced)

    async def run(value):
        monkeypatch.setattr(adapter, "SHARD", value)
        monkeypatch.setattr(wiring, "_scan_unlabelled", lambda: asyncio.sleep(0))
        settings, memo = kopf.OperatorSettings(), kopf.Memo()
        await wiring.select_shard(settings=settings, memo=memo)
        task = getattr(memo, "unlabelled_scan", None)
        if task is not None:
            await task
        return settings.watching.label_selectors, task

    selectors, task = asyncio.run(run("a"))
    assert task is not None
    for plural in shard.PLURALS:
        assert selectors.collect(resource("rbd-operator.io", plural)) == ["rbd-operator.io/shard=a"]
    assert selectors.collect(resource("", "namespaces", namespaced=False)) == []
    assert selectors.collect(resource("kopf.dev", "clusterkopfpeerings", namespaced=False)) == []
    selectors, task = asyncio.run(run(None))
    assert task is None and len(selectors) == 0
    for plural in shard.PLURALS:
        assert selectors.collect(resource("rbd-operator.io", plural)) == []


def test_an_object_that_left_the_shard_is_skipped_by_its_timers_until_it_comes_back():
    """kopf keeps the timers of an object that left the watch (relabelled); handlers/shard.py tells them."""
    import asyncio

    import kopf

    from rbd_operator.handlers import shard as wiring

    forgotten = []

    class Domains:
        def forget(self, uid):
            forgotten.append(uid)

    memo = kopf.Memo()
    memo.shard_left = set()
    memo.runtime = type("Runtime", (), {"domains": Domains()})()
    assert not wiring.left(memo, "u1")
    asyncio.run(wiring._track(type="MODIFIED", uid="u1", meta={}, memo=memo))
    assert not wiring.left(memo, "u1")
    asyncio.run(wiring._track(type="DELETED", uid="u1", meta={}, memo=memo))
    assert wiring.left(memo, "u1") and not wiring.left(memo, "u2") and forgotten == ["u1"]
    asyncio.run(wiring._track(type=None, uid="u1", meta={}, memo=memo))  # listed again: back in this shard
    assert not wiring.left(memo, "u1")
    # a real deletion (kopf's finalizer: deletionTimestamp set) is not remembered: the set stays bounded
    asyncio.run(wiring._track(type="DELETED", uid="u1", meta={}, memo=memo))
    asyncio.run(wiring._track(type="DELETED", uid="u3", meta={"deletionTimestamp": "2026-12-06T15:00:00Z"},
                              memo=memo))
    assert wiring.left(memo, "u1") and not wiring.left(memo, "u3") and forgotten == ["u1", "u1", "u3"]
    asyncio.run(wiring._track(type="DELETED", uid="u1", meta={"deletionTimestamp": "2026-12-06T15:00:00Z"},
                              memo=memo))
    assert memo.shard_left == set(), "relabelled away, then deleted: dropped"
    assert not wiring.left(kopf.Memo(), "u1")  # unsharded: nothing ever left

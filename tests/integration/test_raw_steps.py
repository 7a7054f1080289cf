"""librbd's own object steps the operator takes itself (adapters/ceph/rbd_raw.py), proven per Ceph release
(make test-ceph-matrix runs this file on 16.2, 18.2 and 20.2): a creation killed (SIGKILL) between every
two of its object operations is finished by the next run, as librbd sees it (`rbd info/ls/status`, the
rbd_directory's omap); a second client creating, renaming and opening the same names at the same time
never gets a half-made or doubly-owned image; an old-format (v1) image is refused with a reason; the
fast-path probe agrees with librbd on this release (metric rbd_operator_fastpath_disabled 0)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import threading
import time

import pytest
import rados
import rbd

from .harness import Operator, wait_for
from .manifests import image, storage

MI = 2**20
POINTS = ("create:made", "create:tagged", "rename:id-written", "rename:listed")


@pytest.fixture(scope="module")
def pool(platform, operator, ceph):
    name = "rawsteps"
    platform.apply(storage(platform, name, pool={"pgNum": 8}, client={"name": "rawsteps"}))
    platform.wait_condition("rbds", name, "True")
    return name


def directory(ceph, pool: str) -> dict[str, str]:
    with ceph.open_ioctx(pool) as ioctx, rados.ReadOpCtx() as op:
        it, _ = ioctx.get_omap_vals(op, "", "", 10000)
        ioctx.operate_read_op(op, "rbd_directory")
        return {k: v[4:].decode() for k, v in it}


def consistent(platform, ceph, pool: str, name: str) -> str:
    """librbd's view of a finished creation: returns the image id; fails on any leftover or disagreement."""
    info = json.loads(platform.rbd_cli("info", "--format", "json", f"{pool}/{name}"))
    listed = json.loads(platform.rbd_cli("ls", "--format", "json", pool))
    status = json.loads(platform.rbd_cli("status", "--format", "json", f"{pool}/{name}"))
    entries = directory(ceph, pool)
    image_id = info["id"]
    assert listed.count(name) == 1 and not [n for n in listed if n.startswith("rbdop-")], listed
    assert entries.get(f"name_{name}") == image_id and entries.get(f"id_{image_id}") == name
    assert not [k for k in entries if "rbdop-" in k], entries
    assert status["watchers"] == []
    with ceph.open_ioctx(pool) as ioctx:
        leftovers = [o.key for o in ioctx.list_objects() if o.key.startswith("rbd_id.rbdop-")]
        assert not leftovers, leftovers
        with rbd.Image(ioctx, name, read_only=True) as img:
            assert img.id() == image_id and img.metadata_get("rbd-operator.io/owner")
    return image_id


@pytest.mark.parametrize("point", POINTS)
def test_a_creation_killed_between_two_object_steps_is_finished(platform, operator, ceph, pool, uniq, point):
    name = f"kill-{point.replace(':', '-')}-{uniq}"
    operator.stop()
    crashing = Operator(platform, replica=3, env={"RBD_OPERATOR_FAILPOINTS": point})
    try:
        crashing.start()
        platform.apply(image(name, pool, size="64Mi"))
        wait_for(lambda: crashing.proc.poll() is not None, 60, interval=0.1, what=f"the operator killed at {point}")
        assert crashing.proc.returncode == -9
    finally:
        crashing.stop()
        operator.start()
    platform.wait_condition("rbdimg", name, "True", namespace="default", timeout=120)
    image_id = consistent(platform, ceph, pool, name)
    assert platform.get("rbdimg", name, "default")["status"]["imageId"] == image_id
    platform.delete("rbdimg", name, "default", wait=True)


def test_a_second_client_on_the_same_names_never_gets_a_half_made_image(platform, operator, ceph, pool, uniq):
    """While the operator creates images, another client creates, renames and opens the same final names."""
    names = [f"race2-{uniq}-{i}" for i in range(12)]
    done = threading.Event()
    seen: dict[str, str] = {}

    def other_client() -> None:
        """Creates every other name (racing the operator for it), renames whatever it finds under the names
        away and back, and opens them, until the operator has decided every name."""
        with ceph.open_ioctx(pool) as ioctx:
            while not done.is_set():
                for i, name in enumerate(names):
                    try:
                        if i % 2 == 0:
                            rbd.RBD().create(ioctx, name, 8 * MI, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
                            seen[name] = "created"
                        rbd.RBD().rename(ioctx, name, name + "-x")
                        rbd.RBD().rename(ioctx, name + "-x", name)
                    except (rbd.ImageExists, rbd.ImageNotFound):
                        pass
                    try:
                        with rbd.Image(ioctx, name, read_only=True) as img:
                            img.size()
                    except rbd.ImageNotFound:
                        pass

    thread = threading.Thread(target=other_client, daemon=True)
    with ceph.open_ioctx(pool) as ioctx:  # some names are surely the other client's
        for name in names[0::4]:
            rbd.RBD().create(ioctx, name, 8 * MI, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
            seen[name] = "created"
    try:
        for name in names:
            platform.apply(image(name, pool, size="16Mi"))
        thread.start()
        def decided() -> bool:
            conds = [platform.condition("rbdimg", n, namespace="default") for n in names]
            return all(c and (c["status"] == "True" or c["reason"] == "NotOwned") for c in conds)
        wait_for(decided, 180, what="every image ours or left to the other client")
    finally:
        done.set()
        thread.join(30)
    ours = [n for n in names if platform.condition("rbdimg", n, namespace="default")["status"] == "True"]
    with ceph.open_ioctx(pool) as ioctx:
        listed = rbd.RBD().list(ioctx)
        assert not [n for n in listed if n.startswith("rbdop-")], "no staged leftovers"
        for name in names:
            assert listed.count(name) <= 1
            with rbd.Image(ioctx, name, read_only=True) as img:
                tag = dict(img.metadata_list()).get("rbd-operator.io/owner")
                assert (tag is not None) == (name in ours), f"{name}: owned iff the RbdImage is Ready"
    for name in ours:
        consistent(platform, ceph, pool, name)
    assert set(ours) >= set(names[1::2]), "a name only renamed and opened by the other client is ours"
    assert not set(ours) & set(names[0::4]), "a name the other client made first stays its own (NotOwned)"
    print(f"\n{len(ours)} of {len(names)} names the operator's, {len(names) - len(ours)} the other client's")
    for name in names:
        platform.delete("rbdimg", name, "default", wait=True)
    with ceph.open_ioctx(pool) as ioctx:
        for name in set(rbd.RBD().list(ioctx)) & set(names):
            rbd.RBD().remove(ioctx, name)


def v1_header(size: int) -> bytes:
    """An old-format (format 1) image header as librbd 0.x wrote it (struct rbd_obj_header_ondisk): newer
    librbd no longer creates them, so the test writes one with rados."""
    return struct.pack("<40s24s4s8sBBBBQQIIQ", b"<<< Rados Block Device Image >>>\n", b"rb.0.1234.5678", b"RBD",
                       b"001.005", 22, 0, 0, 0, size, 0, 0, 0, 0)


def test_an_old_format_image_is_refused_with_a_reason(platform, operator, ceph, pool, uniq):
    name = f"v1-{uniq}"
    with ceph.open_ioctx(pool) as ioctx:
        ioctx.write_full(f"{name}.rbd", v1_header(16 * MI))
        with rbd.Image(ioctx, name, read_only=True) as img:
            assert img.old_format()
    for adopt in (False, True):
        platform.apply(image(name, pool, size="16Mi", adopt=adopt))
        cond = platform.wait_condition("rbdimg", name, "False", "NotOwned", namespace="default")
        assert "format 1" in cond["message"]
    assert "UnexpectedError" not in operator.log_text()[-20000:]
    platform.delete("rbdimg", name, "default", wait=True)
    with ceph.open_ioctx(pool) as ioctx:
        assert ioctx.read(f"{name}.rbd", 512) == v1_header(16 * MI), "untouched"
        ioctx.remove_object(f"{name}.rbd")


def test_the_fast_path_agrees_with_librbd_on_this_release(platform, operator, ceph, pool, uniq):
    name = f"fast-{uniq}"
    platform.apply(image(name, pool, size="8Mi"))
    platform.wait_condition("rbdimg", name, "True", namespace="default")
    fsid = ceph.get_fsid()
    metrics = operator.metrics()
    found = re.search(rf'rbd_operator_fastpath_disabled\{{fsid="{fsid}"\}} ([0-9.]+)', metrics)
    assert found and float(found.group(1)) == 0.0, "probed, and the layout is what the fast path expects"
    platform.delete("rbdimg", name, "default", wait=True)


def test_with_the_fast_path_off_images_converge_and_drift_is_still_found(platform, operator, ceph, pool, uniq):
    """A cluster whose layout the probe does not recognise (forced here) gets librbd's own calls: creation,
    the drift sweep (images opened instead of their headers read) and deletion keep working, and a person is
    told (Warning event FastPathDisabled, metric rbd_operator_fastpath_disabled 1)."""
    name = f"slow-{uniq}"
    operator.stop()
    slow = Operator(platform, replica=3, env={"RBD_OPERATOR_FAILPOINTS": "probe:mismatch"})
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    try:
        slow.start()
        platform.apply(image(name, pool, size="16Mi"))
        platform.wait_condition("rbdimg", name, "True", namespace="default")
        consistent(platform, ceph, pool, name)
        fsid = ceph.get_fsid()
        assert re.search(rf'rbd_operator_fastpath_disabled\{{fsid="{fsid}"\}} 1', slow.metrics())
        # Told once, on whatever turned it off: this image's pass, or a storage's sweep when that reached the
        # cluster first (the slow replica's start sweeps the storages that have images). Events post async.
        storages = {s["metadata"]["name"] for s in json.loads(platform.kubectl("get", "rbds", "-o", "json").stdout)["items"]}

        def told() -> list[dict]:
            out = json.loads(platform.kubectl("get", "events", "-n", "default", "-o", "json", "--field-selector",
                                              "reason=FastPathDisabled").stdout)["items"]
            return [e for e in out if e["type"] == "Warning" and (e.get("lastTimestamp") or "") >= started and (
                (e["involvedObject"]["kind"], e["involvedObject"]["name"]) == ("RbdImage", name)
                or (e["involvedObject"]["kind"] == "RbdStorage" and e["involvedObject"]["name"] in storages))]
        warned = wait_for(told, 20, what="the FastPathDisabled Warning")
        assert "a mismatch forced by a test" in warned[0]["message"], warned
        with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name) as img:
            img.resize(64 * MI)  # drift, by hand
        def restored() -> bool:  # noqa: E306
            with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
                return img.size() == 16 * MI
        # The sweep finds it (the image opened: no header read) and the shrink back is refused (no allowShrink):
        platform.wait_condition("rbdimg", name, "False", "ShrinkNotAllowed", namespace="default", timeout=60)
        assert not restored()
        platform.delete("rbdimg", name, "default", wait=True)
        with ceph.open_ioctx(pool) as ioctx:
            assert name in [t["name"] for t in rbd.RBD().trash_list(ioctx)]
    finally:
        slow.stop()
        operator.start()


def test_probe_images_of_a_killed_operator_are_removed(platform, operator, ceph, pool, uniq):
    """A process killed mid-probe leaves its probe image (random name, in a tenant's pool), or only its listing
    when it was killed inside librbd's create or remove (CI killed one there: the e2e takeover test): the next
    process removes both before its own probe in that pool; images that only share the prefix (another name
    form, or the probe's name form with another size) are left alone."""
    hexed = (uniq + "0" * 12)[:12]
    stray, cut = f"rbdop-probe-{hexed}", f"rbdop-probe-{hexed[::-1]}-moved"
    decoys = [f"rbdop-probe-{uniq[:8]}user", f"rbdop-probe-{hexed[:6]}ffffff"]
    with ceph.open_ioctx(pool) as ioctx:
        for name in (stray, cut):
            rbd.RBD().create(ioctx, name, 4 * MI + 4096, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
        for decoy in decoys:
            rbd.RBD().create(ioctx, decoy, 8 * MI, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
        with rbd.Image(ioctx, cut, read_only=True) as img:
            cut_id = img.id()
        ioctx.remove_object(f"rbd_header.{cut_id}")  # librbd's remove killed after the header went
        assert cut in rbd.RBD().list(ioctx)
        with pytest.raises(rbd.ImageNotFound):
            rbd.Image(ioctx, cut, read_only=True)
    operator.stop()
    operator.start()  # a new process: it clears the pool once, before its first fast-path step there
    try:
        platform.apply(image(f"after-probe-{uniq}", pool, size="16Mi"))
        platform.wait_condition("rbdimg", f"after-probe-{uniq}", "True", namespace="default")
        with ceph.open_ioctx(pool) as ioctx:
            listed = rbd.RBD().list(ioctx)
            assert not [o.key for o in ioctx.list_objects() if o.key in (f"rbd_id.{cut}", f"rbd_id.{stray}")]
        assert stray not in listed and cut not in listed and all(d in listed for d in decoys), listed
        assert not [n for n in listed if n.startswith("rbdop-probe-") and n not in decoys], listed
    finally:
        with ceph.open_ioctx(pool) as ioctx:
            for decoy in decoys:
                rbd.RBD().remove(ioctx, decoy)
        platform.delete("rbdimg", f"after-probe-{uniq}", "default", wait=True)


def test_a_probe_image_a_killed_process_left_open_is_removed_once_its_watch_expires(platform, operator, ceph, pool,
                                                                                    uniq):
    """The e2e takeover test's case (CI: `rbdop-probe-…` still listed after every image was Ready): a process
    killed while it held its probe image open leaves a watch the OSDs keep until osd_client_watch_timeout (30 s).
    The next process finds the image still open, leaves it (it may not remove an image someone has open), and
    looks again after PROBE_RETRY_SECONDS: it goes at the first fast-path call after that (here a resync)."""
    stray = f"rbdop-probe-{(uniq[::-1] + 'a' * 12)[:12]}"
    with ceph.open_ioctx(pool) as ioctx:
        rbd.RBD().create(ioctx, stray, 4 * MI + 4096, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
    # Another client opens it read-write (a watch on its header) and is killed with it open.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import rados, rbd, sys, time\n"
         f"c = rados.Rados(conffile={str(platform.ceph_conf)!r}); c.connect(timeout=15)\n"
         f"i = c.open_ioctx({pool!r}); img = rbd.Image(i, {stray!r})\n"
         "print('open', flush=True); time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
    finally:
        holder.kill()
        holder.wait()
    killed_at = time.monotonic()
    with ceph.open_ioctx(pool) as ioctx, rbd.Image(ioctx, stray, read_only=True) as img:
        assert list(img.watchers_list()), "the killed client's watch is still there"
    operator.stop()
    operator.start()
    try:
        platform.apply(image(f"open-probe-{uniq}", pool, size="16Mi"))
        platform.wait_condition("rbdimg", f"open-probe-{uniq}", "True", namespace="default")

        def gone() -> bool:
            with ceph.open_ioctx(pool) as ioctx:
                return stray not in rbd.RBD().list(ioctx)
        # watch timeout (30 s) + PROBE_RETRY_SECONDS (35 s) + a resync (5 s), with room
        wait_for(gone, 150, interval=1, what="the stray probe image removed once its watch expired")
        took = time.monotonic() - killed_at
        assert took > 25, f"removed {took:.0f} s after the kill: while the dead client's watch was still there?"
        log = operator.log_text()
        assert f"still open ({stray})" in log, "the first look found it open (the path under test)"
        with ceph.open_ioctx(pool) as ioctx:
            assert not [n for n in rbd.RBD().list(ioctx) if n.startswith("rbdop-probe-")]
    finally:
        platform.delete("rbdimg", f"open-probe-{uniq}", "default", wait=True)
        with ceph.open_ioctx(pool) as ioctx:
            try:
                rbd.RBD().remove(ioctx, stray)
            except rbd.ImageNotFound:
                pass

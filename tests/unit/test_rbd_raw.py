"""adapters/ceph/rbd_raw.py against bytes librbd and cls_rbd wrote on real clusters (16.2, 18.2, 20.2;
captured with hack/capture-rbd-raw.py into tests/unit/data/rbd-raw-<release>.json), and the decisions of
the three-step rename against a recording stand-in for an ioctx."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rados

from rbd_operator.adapters.ceph import rbd_raw

DATA = Path(__file__).parent / "data"
CAPTURES = sorted(DATA.glob("rbd-raw-*.json"))
NAME, OWNER_VALUE = "disk-1", "vms/disk-1/0a1b@c/d"


@pytest.fixture(params=CAPTURES, ids=lambda p: p.stem)
def captured(request) -> dict:
    return json.loads(request.param.read_text())


def test_all_three_releases_were_captured():
    assert {p.stem for p in CAPTURES} == {"rbd-raw-pacific", "rbd-raw-reef", "rbd-raw-tentacle"}


def test_string_encoding_is_what_librbd_writes_into_rbd_id_and_the_directory(captured):
    image_id = captured["image_id"]
    assert rbd_raw.encode_str(image_id).hex() == captured["rbd_id"], "rbd_id.<name> holds the encoded id"
    assert rbd_raw.decode_str(bytes.fromhex(captured["rbd_id"])) == image_id
    assert rbd_raw.decode_str(bytes.fromhex(captured["dir_get_id"])) == image_id, "cls_rbd dir_get_id's answer"
    directory = captured["directory"]
    assert directory[f"name_{NAME}"] == rbd_raw.encode_str(image_id).hex()
    assert directory[f"id_{image_id}"] == rbd_raw.encode_str(NAME).hex()


def test_header_values_decode_as_librbd_wrote_them(captured):
    header = captured["header"]
    assert rbd_raw.decode_u64(bytes.fromhex(header["size"])) == 3 * 2**30 + 4096
    assert rbd_raw.decode_u64(bytes.fromhex(header["features"])) == 1 | 4 | 8 | 16
    # parent: only in a clone's header; flags: only once librbd flagged something (absent reads as 0)
    assert set(rbd_raw.header_keys(["rbd-operator.io/owner"])) <= set(header) | {"parent", "flags"}
    # Image metadata is stored as the raw value under metadata_<key>: what our cls metadata_set map carries.
    stored = bytes.fromhex(header["metadata_rbd-operator.io/owner"])
    assert stored == OWNER_VALUE.encode()
    assert _decode_map(rbd_raw.encode_map({"rbd-operator.io/owner": OWNER_VALUE})) == {
        "rbd-operator.io/owner": stored}


def _decode_map(raw: bytes) -> dict[str, bytes]:
    """Ceph's map<string, bufferlist>: u32 count, then (u32 length, bytes) for each key and value."""
    count, pos, out = int.from_bytes(raw[:4], "little"), 4, {}
    for _ in range(count):
        parts = []
        for _ in range(2):
            length = int.from_bytes(raw[pos:pos + 4], "little")
            parts.append(raw[pos + 4:pos + 4 + length])
            pos += 4 + length
        out[parts[0].decode()] = parts[1]
    assert pos == len(raw), "nothing left over"
    return out


@pytest.mark.parametrize("raw", [b"", b"\x05\x00\x00", b"\x05\x00\x00\x00abc", b"\x02\x00\x00\x00\xff\xfe",
                                 b"\xff\xff\xff\xff"])
def test_hostile_bytes_decode_to_nothing(raw):
    assert rbd_raw.decode_str(raw) is None
    assert rbd_raw.decode_u64(raw[:7]) is None


class FakeIoctx:
    """Objects and an rbd_directory in memory, with cls_rbd's refusals; records every call."""

    def __init__(self, objects: dict[str, bytes], directory: dict[str, str]) -> None:
        self.objects, self.directory, self.calls = dict(objects), dict(directory), []

    def read(self, oid: str, length: int = 8192) -> bytes:
        self.calls.append(("read", oid))
        if oid not in self.objects:
            raise rados.ObjectNotFound(oid)
        return self.objects[oid][:length]

    def operate_write_op(self, op: "FakeOp", oid: str) -> None:
        self.calls.append(("create", oid))
        if op.exclusive and oid in self.objects:
            raise rados.ObjectExists(oid)
        self.objects[oid] = op.data

    def remove_object(self, oid: str) -> None:
        self.calls.append(("remove", oid))
        if oid not in self.objects:
            raise rados.ObjectNotFound(oid)
        del self.objects[oid]

    def execute(self, oid: str, cls: str, method: str, data: bytes) -> tuple[int, bytes]:
        self.calls.append((method, oid))
        parts, pos = [], 0
        while pos < len(data):
            length = int.from_bytes(data[pos:pos + 4], "little")
            parts.append(data[pos + 4:pos + 4 + length].decode())
            pos += 4 + length
        if method == "dir_get_id":
            if parts[0] not in self.directory:
                raise rados.ObjectNotFound(parts[0])
            return 0, rbd_raw.encode_str(self.directory[parts[0]])
        src, dst, image_id = parts
        if dst in self.directory or self.directory.get(src) != image_id:
            raise rados.ObjectExists(dst)
        del self.directory[src]
        self.directory[dst] = image_id
        return 0, b""


class FakeOp:
    def __init__(self) -> None:
        self.exclusive, self.data = False, b""

    def __enter__(self) -> "FakeOp":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def new(self, flag: int) -> None:
        self.exclusive = flag == rados.LIBRADOS_CREATE_EXCLUSIVE

    def write_full(self, data: bytes) -> None:
        self.data = data


@pytest.fixture(autouse=True)
def _fake_write_op(monkeypatch):
    monkeypatch.setattr(rados, "WriteOpCtx", FakeOp)


def staged(directory: dict[str, str] | None = None, **objects: bytes) -> FakeIoctx:
    base = {"rbd_id.stage": rbd_raw.encode_str("abc")}
    return FakeIoctx({**base, **{k.replace("__", "."): v for k, v in objects.items()}},
                     {"stage": "abc", **(directory or {})})


def test_a_rename_takes_librbd_s_three_steps():
    io = staged()
    rbd_raw.rename_staged(io, "test", "stage", "disk", "abc")
    assert io.directory == {"disk": "abc"} and io.objects == {"rbd_id.disk": rbd_raw.encode_str("abc")}
    assert [c[0] for c in io.calls] == ["read", "create", "dir_rename_image", "remove"]


def test_a_rename_cut_short_after_its_first_step_is_finished():
    io = staged(rbd_id__disk=rbd_raw.encode_str("abc"))  # step 1 done, the directory still says "stage"
    rbd_raw.rename_staged(io, "test", "stage", "disk", "abc")
    assert io.directory == {"disk": "abc"} and "rbd_id.stage" not in io.objects


def test_a_name_someone_else_holds_is_left_to_them():
    io = staged({"disk": "xyz"}, rbd_id__disk=rbd_raw.encode_str("xyz"))
    with pytest.raises(rbd_raw.NameTaken):
        rbd_raw.rename_staged(io, "test", "stage", "disk", "abc")
    assert io.objects["rbd_id.disk"] == rbd_raw.encode_str("xyz") and io.directory["disk"] == "xyz"
    # Listed in the directory but without its rbd_id (someone mid-creation): our id object is dropped again.
    io = staged({"disk": "xyz"})
    with pytest.raises(rbd_raw.NameTaken):
        rbd_raw.rename_staged(io, "test", "stage", "disk", "abc")
    assert "rbd_id.disk" not in io.objects and io.directory == {"stage": "abc", "disk": "xyz"}


def test_an_id_object_naming_another_image_is_never_taken_for_ours():
    io = staged()
    io.objects["rbd_id.stage"] = rbd_raw.encode_str("other")
    with pytest.raises(Exception) as err:
        rbd_raw.rename_staged(io, "test", "stage", "disk", "abc")
    assert getattr(err.value, "reason", "") == "CephCommandFailed" and "rbd_id.disk" not in io.objects

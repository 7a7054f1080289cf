#!/usr/bin/env python3
"""Captures the bytes of librbd's own objects from a real cluster, for tests/unit/test_rbd_raw.py: the
operator's encoders and decoders (operator/rbd_operator/adapters/ceph/rbd_raw.py) are checked against
what librbd itself wrote and what cls_rbd answered.

  hack/capture-rbd-raw.py CEPH_CONF [POOL]    prints a JSON document (hex strings)

Made with librbd (rbd.RBD().create, metadata_set) in a pool of its own, removed afterwards.
"""

from __future__ import annotations

import json
import sys

import rados
import rbd


def main(conf: str, pool: str = "rbd-raw-capture") -> dict:
    cluster = rados.Rados(conffile=conf)
    cluster.connect(timeout=15)
    try:
        cluster.create_pool(pool)
    except rados.ObjectExists:
        pass
    try:
        with cluster.open_ioctx(pool) as ioctx:
            rbd.RBD().pool_init(ioctx, False)
            rbd.RBD().create(ioctx, "disk-1", 3 * 2**30 + 4096, old_format=False, features=1 | 4 | 8 | 16)
            with rbd.Image(ioctx, "disk-1") as image:
                image_id = image.id()
                image.metadata_set("rbd-operator.io/owner", "vms/disk-1/0a1b@c/d")
            _, dir_get_id = ioctx.execute("rbd_directory", "rbd", "dir_get_id",
                                          len(b"disk-1").to_bytes(4, "little") + b"disk-1")
            with rados.ReadOpCtx() as op:
                it, _ = ioctx.get_omap_vals(op, "", "", 100)
                ioctx.operate_read_op(op, f"rbd_header.{image_id}")
                header = {k: v.hex() for k, v in it}
            with rados.ReadOpCtx() as op:
                it, _ = ioctx.get_omap_vals(op, "", "", 100)
                ioctx.operate_read_op(op, "rbd_directory")
                directory = {k: v.hex() for k, v in it}
            _, version, _ = cluster.mon_command(json.dumps({"prefix": "version", "format": "json"}), b"")
            out = {"ceph_version": json.loads(version)["version"], "image_id": image_id,
                   "rbd_id": ioctx.read("rbd_id.disk-1", 256).hex(), "dir_get_id": dir_get_id.hex(),
                   "header": header, "directory": directory}
            rbd.RBD().remove(ioctx, "disk-1")
        return out
    finally:
        cluster.delete_pool(pool)
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=1, sort_keys=True))

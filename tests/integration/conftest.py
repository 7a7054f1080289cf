import os
import uuid

import pytest
import rados

from .harness import Operator, Platform, start_platform, stop_platform


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def platform():
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces, Ceph daemons)")
    plat = start_platform()
    try:
        yield plat
    finally:
        stop_platform(plat)


@pytest.fixture(scope="session")
def operator(platform: Platform):
    op = Operator(platform)
    op.start()
    try:
        yield op
    finally:
        op.stop()
    # It runs under deploy/'s RBAC: nothing it needs may be forbidden.
    # (A 403 for a namespace being deleted is the API server's NamespaceTerminating, not RBAC.)
    forbidden = [line for line in op.log_text().splitlines()
                 if (" 403" in line or "Forbidden" in line) and "NamespaceTerminating" not in line]
    assert not forbidden, "the operator was refused by the API server:\n" + "\n".join(forbidden[:10])


@pytest.fixture(scope="session")
def ceph(platform: Platform):
    """An admin librados connection to the test cluster, for checking what the operator did."""
    cluster = rados.Rados(conffile=str(platform.ceph_conf), conf={"client_mount_timeout": "15"})
    cluster.connect(timeout=15)
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture
def uniq():
    """A short unique suffix so tests never collide on pool, client or image names."""
    return uuid.uuid4().hex[:6]

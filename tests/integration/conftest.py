import os
import uuid

import pytest
import rados

from . import leakscan
from .harness import (BRIDGE, HOST_PREFIX, NET, OPERATOR_NAMESPACE, WORK, Operator, Platform, sh, start_platform,
                      stop_platform)
from .labhosts import TESTHOST, LabHost, ssh_secret


class LeakWatch:
    """The session's leak scan (tests/leakscan.py): argv sampled all along, Secrets collected after
    every test (keys rotated or deleted meanwhile are still searched for), hosts scanned before they
    go, the rest at the end of the session."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.argv = leakscan.ArgvSampler()
        self.secrets: dict[str, str] = {}
        self.findings = leakscan.Findings()

    def kubectl(self, *args: str) -> str:
        return self.platform.kubectl(*args).stdout

    def collect(self, host_runs: list = ()) -> None:
        self.secrets.update(leakscan.collect_secrets(self.kubectl, OPERATOR_NAMESPACE, self.platform.ceph_dir,
                                                     list(host_runs)))

    def scan_hosts(self, host_runs: list) -> None:
        self.collect(host_runs)
        for run in host_runs:
            leakscan.scan_host_files(self.findings, run, self.secrets)


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
def leaks(platform: Platform):
    watch = LeakWatch(platform)
    with watch.argv:
        yield watch
        watch.collect()
        final = leakscan.scan(watch.kubectl, OPERATOR_NAMESPACE, platform.ceph_dir, [],
                              [WORK / "operator.log"], watch.argv, watch.secrets)
    watch.findings.scanned += final.scanned
    watch.findings.found += final.found
    leakscan.record(WORK / "leakscan.json", watch.findings, watch.argv, "integration")
    assert not watch.findings.found, "secrets leaked:\n" + "\n".join(watch.findings.found[:20])


@pytest.fixture(autouse=True)
def _collect_secrets(request):
    """After each test that had the platform: remember the keys that exist now."""
    yield
    if "leaks" in request.fixturenames or "operator" in request.fixturenames:
        request.getfixturevalue("leaks").collect()


@pytest.fixture(scope="session")
def operator(platform: Platform, leaks):
    op = Operator(platform)
    op.start()
    try:
        yield op
    finally:
        op.stop()
    # It runs under deploy/'s RBAC: nothing it needs may be forbidden.
    # (A 403 for a namespace being deleted is the API server's NamespaceTerminating, not RBAC.)
    forbidden = op.refusals()
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


@pytest.fixture(scope="session")
def hosts(platform, leaks):
    sh(TESTHOST, "prepare", timeout=1800)
    wanted = {
        "t-h1": LabHost(f"{HOST_PREFIX}h1", f"{NET}.11", "debian"),
        "t-h2": LabHost(f"{HOST_PREFIX}h2", f"{NET}.12", "debian"),
        # The seed's starting point: stock qemu-kvm/qemu-img (and with them libvirt) installed.
        "t-r1": LabHost(f"{HOST_PREFIX}r1", f"{NET}.21", "rpm"),
    }
    try:
        for host in wanted.values():
            env = {"TESTHOST_NO_REPO": "1"} if host.family == "debian" else {"TESTHOST_PREINSTALL": "qemu-kvm qemu-img"}
            sh(TESTHOST, "up", host.name, BRIDGE, f"{host.address}/24", host.family, env=env, timeout=900)
            platform.apply(ssh_secret(host))
        yield wanted
    finally:
        leaks.scan_hosts([host.run_dir for host in wanted.values()])  # before their files go
        for host in wanted.values():
            platform.delete("hvn", host.name)
            sh(TESTHOST, "down", host.name, check=False)
        sh(TESTHOST, "repo-down", check=False)

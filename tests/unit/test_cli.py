"""The console scripts: `rbd-operator` runs the operator by default (or `run`), `discover` is a subcommand, and
`kubectl-rbd` takes `discover` only."""

import sys

import pytest

from rbd_operator import __main__ as entry
from rbd_operator import cli


def test_discover_is_a_subcommand(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "discover_main", lambda argv, prog="": seen.append(argv) or 0)
    assert entry.main(["discover", "--namespace", "vms"]) == 0
    assert seen == [["--namespace", "vms"]]


@pytest.mark.parametrize("argv,expected", [(["--verbose"], ["--verbose"]), (["run", "--verbose"], ["--verbose"]),
                                           ([], [])])
def test_the_operator_stays_the_default(monkeypatch, argv, expected):
    seen = []
    monkeypatch.setattr(entry, "run", lambda a: seen.append(a) or 0)
    assert entry.main(argv) == 0 and seen == [expected]


def test_discover_needs_its_inputs(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.discover_main(["--namespace", "vms"])
    assert exit_.value.code == 2 and "--ceph-conf" in capsys.readouterr().err


def test_hosts_need_a_key_and_known_hosts(capsys, tmp_path):
    code = cli.discover_main(["--ceph-conf", str(tmp_path / "none"), "--keyring", str(tmp_path / "k"),
                              "--namespace", "vms", "--host", "h1"])
    assert code == cli.FAILED and "--known-hosts" in capsys.readouterr().err


def test_kubectl_plugin_takes_discover_only(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["kubectl-rbd", "delete"])
    assert cli.kubectl_main() == cli.FAILED and "kubectl rbd discover" in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(cli, "discover_main", lambda argv, prog="": seen.append((argv, prog)) or 0)
    monkeypatch.setattr(sys, "argv", ["kubectl-rbd", "discover", "--pool", "p"])
    assert cli.kubectl_main() == 0 and seen == [(["--pool", "p"], "kubectl rbd discover")]

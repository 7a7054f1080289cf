"""The leak scanner itself finds what it looks for (a scanner that cannot fail proves nothing)."""

import subprocess
import sys
import time

from tests.integration import leakscan

KEY = "AQBzZWNyZXRzZWNyZXRzZWNyZXRzZWNyZXQ9PQ=="


def test_finds_a_key_in_argv_and_in_host_files_but_not_where_keys_belong(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)", KEY])
    try:
        with leakscan.ArgvSampler(interval=0.05) as argv:
            time.sleep(0.5)
    finally:
        proc.kill()
    findings = leakscan.Findings()
    for line in argv.seen:
        findings.check("argv", line, {KEY: "k"})
    assert findings.found == ["k in argv"]

    upper = tmp_path / "h1" / "upper"
    (upper / "etc/ceph").mkdir(parents=True)
    (upper / "etc/ceph/ceph.client.vm.keyring").write_text(f"key = {KEY}\n")  # where it belongs
    (upper / "var/log").mkdir(parents=True)
    (upper / "var/log/syslog").write_text(f"oops {KEY}\n")
    found = leakscan.Findings()
    leakscan.scan_host_files(found, tmp_path / "h1", {KEY: "k"})
    assert found.found == ["k in h1:/var/log/syslog"] and found.scanned == 1


def test_ssh_key_fragments_are_body_lines_but_the_shared_header():
    header = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"
    unique = "QyNTUxOQAAACBkZWFkYmVlZmRlYWRiZWVmZGVhZGJlZWZkZWFkYmVlZgAAAJgAAAAAAAAA"
    pem = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{header}\n{unique}\nQy\n-----END OPENSSH PRIVATE KEY-----\n"
    assert leakscan.ssh_key_fragments(pem) == {unique}

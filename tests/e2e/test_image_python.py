"""The image's Python (3.13, Debian 13) runs the package's unit and contract tests against the package
as the image installed it (hack/image-unit-tests.sh); the venv of this machine runs them on 3.11."""

from __future__ import annotations

import re

from tests.integration.harness import ROOT, sh

from .conftest import IMAGE, record


def test_unit_and_contract_tests_pass_on_the_images_python():
    out = sh(str(ROOT / "hack" / "image-unit-tests.sh"), IMAGE, "tests/contract", check=False, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    python = re.search(r"\(Python (\d+\.\d+);", text)
    assert python and python.group(1) == "3.13", text[-2000:]
    summary = re.findall(r"\b(\d+) passed(?:, (\d+) skipped)?", text)
    assert summary and int(summary[-1][0]) > 0, text[-2000:]
    record(image_python=python.group(1), image_unit_tests_passed=int(summary[-1][0]),
           image_unit_tests_skipped=int(summary[-1][1] or 0))

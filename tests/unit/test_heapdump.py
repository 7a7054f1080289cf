"""The SIGUSR2 heap report (heapdump.py): pymalloc's totals and the largest resident mappings beside the type
counts — numbers, type names and mapping paths only, never an object's content."""

import re

from rbd_operator import heapdump

SECRET = "AQBsecretkeyvalue0123456789=="


def test_the_report_says_where_the_resident_memory_is():
    held = [{"key": SECRET + str(i)} for i in range(1000)]
    text = heapdump.report()
    assert held
    assert re.search(r"^rss_kib \d+$", text, re.M)
    assert re.search(r"^  # arenas allocated current = [\d,]+$", text, re.M), "pymalloc's arenas"
    assert re.search(r"^  # bytes in allocated blocks = [\d,]+$", text, re.M)
    mappings = re.search(r"^## mappings rss_kib (\d+)$", text, re.M)
    assert mappings and int(mappings.group(1)) > 0
    rows = re.findall(r"^ +(\d+) KiB (\S.*)$", text, re.M)
    assert rows and all(where.startswith(("/", "[")) for _, where in rows)
    assert SECRET not in text

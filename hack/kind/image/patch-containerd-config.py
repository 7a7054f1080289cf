#!/usr/bin/env python3
"""Adapts kind's containerd config (images/base/files/etc/containerd/config.toml) to this node image:
no fuse-overlayfs proxy snapshotter (its unit is not shipped either), and restrict_oom_score_adj on,
which containerd inside the node needs on a cgroup v1 host.  Usage: patch-containerd-config.py FILE"""
import re
import sys

path = sys.argv[1]
text = open(path).read()
text = re.sub(r'\[proxy_plugins\]\n(#.*\n)*\[proxy_plugins\."fuse-overlayfs"\]\n(  .*\n)+', '', text)
text = text.replace("restrict_oom_score_adj = false", "restrict_oom_score_adj = true")
assert "fuse-overlayfs\"]" not in text and "restrict_oom_score_adj = true" in text
open(path, "w").write(text)

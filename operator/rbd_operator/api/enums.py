"""Closed sets of values the specs and the planners share (a typo is an AttributeError, not a silent mismatch)."""

from __future__ import annotations

from enum import StrEnum


class DeletionPolicy(StrEnum):
    DELETE = "Delete"
    RETAIN = "Retain"


class Profile(StrEnum):
    """What a HypervisorNode is made capable of (spec.packages.profile)."""
    QEMU_RBD = "qemu-rbd"
    KERNEL_RBD = "kernel-rbd"
    NONE = "none"


class Family(StrEnum):
    """The package family of a host (from /etc/os-release)."""
    DEBIAN = "debian"
    RHEL = "rhel"

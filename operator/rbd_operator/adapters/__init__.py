"""Adapters to the systems the operator drives: Ceph, Kubernetes, SSH, libvirt."""

"""rbd-operator: declarative Ceph RBD storage for KVM/libvirt hypervisors."""

GROUP = "rbd-operator.io"
VERSION = "v1alpha1"

# rbd-operator's container image: `make image` builds rbd-operator:<version from pyproject.toml>.
# Debian 13 (trixie): Python 3.13, Ceph 18.2's client libraries. BASE_IMAGE defaults (hack/build-image.sh)
# to a Debian trixie built locally from Debian packages (hack/build-base-image.sh trixie: debootstrap +
# docker import); BASE_IMAGE=debian:trixie-slim uses the public one.
ARG BASE_IMAGE=debian:trixie-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip binutils \
 && rm -rf /var/lib/apt/lists/*
# Wheels of the package and its dependencies (for this image's Python), fetched by `make image` on the
# build machine (whose pip trusts its network's CAs): nothing is fetched from PyPI inside the build.
COPY .cache/image-wheels /wheels
# Debian's rados/rbd/libvirt bindings come from the runtime stage's packages (system site packages).
# kubernetes/aio (an asyncio copy of the whole client, 67 MB) is never imported: removed. Extension
# modules lose their debug sections (uvloop's ships 13 MB of them; its Cython sources go too).
RUN python3 -m venv --system-site-packages /opt/rbd-operator \
 && /opt/rbd-operator/bin/pip install --no-cache-dir --no-compile --no-index --find-links /wheels -q rbd-operator \
 && /opt/rbd-operator/bin/pip uninstall -y -q pip setuptools \
 && site=$(/opt/rbd-operator/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && rm -rf $site/kubernetes/aio $site/kubernetes/test $site/kubernetes/e2e_test \
 && find $site -name '*.so' -exec strip --strip-debug {} + \
 && find $site/uvloop \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' \) -delete \
 && find /opt/rbd-operator -name '__pycache__' -prune -exec rm -rf {} + \
 && find /opt/rbd-operator -name '*.dist-info' -path '*/site-packages/*' -prune -exec sh -c 'rm -f "$1"/RECORD' _ {} \;

FROM ${BASE_IMAGE} AS runtime
# qemu-img converts templates (adapters/qemu_img.py): qemu-utils without recommends, and of qemu-block-extra
# only its rbd block driver (the package would pull in gluster, iscsi, nfs and ssh libraries).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-rados python3-rbd python3-libvirt ca-certificates qemu-utils \
 && cd /tmp && apt-get download -qq qemu-block-extra \
 && dpkg-deb -x qemu-block-extra_*.deb /tmp/qbe \
 && install -D -m 0644 /tmp/qbe/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so \
 && rm -rf /tmp/qbe /tmp/qemu-block-extra_*.deb && cd / \
 && qemu-img --help | grep -q ' rbd ' \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && dpkg --purge apt $(dpkg-query -W -f '${Package}\n' 'libapt-pkg*' debian-archive-keyring gpgv sqv 2>/dev/null) \
 && rm -rf /var/cache/apt /var/lib/apt /var/log/apt /var/log/dpkg.log /etc/apt \
      /usr/share/doc /usr/share/man /usr/share/info \
 && echo 'nonroot:x:65532:65532:rbd-operator:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'nonroot:x:65532:' >> /etc/group
COPY --from=build /opt/rbd-operator /opt/rbd-operator
# Bytecode compiled at build time: the root filesystem is read-only at run time.
RUN python3 -m compileall -q /opt/rbd-operator /usr/lib/python3/dist-packages/rados* /usr/lib/python3/dist-packages/rbd* \
      /usr/lib/python3/dist-packages/libvirt* >/dev/null \
 && /opt/rbd-operator/bin/python -c "import rados, rbd, libvirt, kopf, kubernetes, paramiko, prometheus_client, uvloop, zstandard, rbd_operator.handlers"
# One layer: what the runtime stage removed (apt, its lists, docs) is really gone from the image.
FROM scratch
COPY --from=runtime / /
ENV PATH=/opt/rbd-operator/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A named user (kopf's and the operator's default peering identity is user@host: getpass.getuser() fails
# for a uid without a passwd entry unless POD_ID is set, as deploy/ does).
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["rbd-operator"]
CMD ["--log-format", "json", "--liveness", "http://0.0.0.0:8080/healthz"]

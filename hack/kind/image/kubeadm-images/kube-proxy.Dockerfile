# kube-proxy needs iptables, conntrack, ipset and kmod beside its binary: the project's base image
# (BASE_IMAGE, hack/build-base-image.sh) plus those Debian packages.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables conntrack ipset kmod \
&& apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
COPY kube-proxy /usr/local/bin/kube-proxy

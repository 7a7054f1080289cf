# CoreDNS built from its Go module (hack/kind/coredns) at the version kubeadm deploys.
FROM scratch
COPY coredns /coredns
ENTRYPOINT ["/coredns"]

# kube-apiserver, kube-controller-manager, kube-scheduler, etcd: one static binary each, as kubeadm's
# static pods run them (the command in the pod spec, found on PATH). NAME: the binary, in the context.
FROM scratch
ARG NAME
COPY ${NAME} /usr/local/bin/${NAME}
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 0

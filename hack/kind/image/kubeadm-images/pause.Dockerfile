# The sandbox container: hack/kind/image/pause.c, built static (the context holds the binary).
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]

# The cortexctl image, built by goreleaser (dockers_v2) from the binaries it
# has just built: the build context holds linux/amd64/cortexctl and
# linux/arm64/cortexctl. It is not for `docker build .` on a source tree.
#
# distroless static: CA certificates, tzdata and /tmp, no shell, no package
# manager. It runs as the numeric non-root user 65532, so Kubernetes'
# runAsNonRoot can verify it without a name lookup.
FROM gcr.io/distroless/static-debian12:nonroot
ARG TARGETPLATFORM
COPY $TARGETPLATFORM/cortexctl /usr/bin/cortexctl
USER 65532:65532
# gateway 7470; metrics of safety 9471, scheduler 9472, worker 9473
EXPOSE 7470 9471 9472 9473
ENTRYPOINT ["/usr/bin/cortexctl"]
CMD ["--help"]

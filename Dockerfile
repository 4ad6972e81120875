# syntax=docker/dockerfile:1
#
# The one pgkeep image: the db container (`pgkeep serve`), the init containers
# (`pgkeep prep-dirs`), the backup CronJobs, the restore/bootstrap/wipe Jobs and the
# backups-loader pod all run it, so pg_dump, pg_basebackup and the server are always the same
# PostgreSQL version.
#
#   docker build -t pgkeep:0.1.0-pg18 .
#
# The tag must match the `kube.image` setting. POSTGRES_IMAGE must stay 18 or newer: images up
# to 17 declare VOLUME /var/lib/postgresql/data, which shadows PGDATA when the data volume is
# mounted at /var/lib/postgresql (pgkeep's guard refuses to start on that; `pgkeep lint` flags it).
ARG POSTGRES_IMAGE=postgres:18-bookworm
ARG RUST_IMAGE=rust:1.89-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pgkeep \
 && install -D -m 0755 target/release/pgkeep /out/pgkeep

FROM ${POSTGRES_IMAGE}
COPY --from=build /out/pgkeep /usr/local/bin/pgkeep
# The official image's entrypoint script is not used: `pgkeep serve` guards the mounts, runs
# initdb and supervises postgres itself. uid 999 is the image's `postgres` account.
USER 999:999
ENTRYPOINT ["pgkeep"]
CMD ["serve"]
# `pgkeep serve` turns SIGTERM (what Kubernetes sends) into a fast shutdown; the base image's
# STOPSIGNAL SIGINT means the same to it.
STOPSIGNAL SIGTERM

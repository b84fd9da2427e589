# PostgreSQL 15 for the job store, from Debian's package on the same base as Beacon's image (no image
# registry needed). First start: initdb with user and database `beacon`, password POSTGRES_PASSWORD.
#   docker build -f docker/postgres.Dockerfile -t beacon-postgres:local [--build-arg BASE_IMAGE=…] .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/beacon-pg \
 && chown postgres:postgres /var/lib/beacon-pg
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PGDATA=/var/lib/beacon-pg/data PATH=/usr/lib/postgresql/15/bin:$PATH
USER postgres
VOLUME ["/var/lib/beacon-pg"]
EXPOSE 5432
HEALTHCHECK --interval=3s --timeout=3s --start-period=20s --retries=10 CMD pg_isready -h 127.0.0.1 -U beacon -d beacon
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]

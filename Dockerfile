# Image for the `docker` sandbox backend (sandboxes/docker_backend.py).
#
#   docker build --target sandbox -t appo-sandbox:local .
#   docker build --target sandbox --build-arg BASE=appo-base:local -t appo-sandbox:local .   # offline
#
# BASE needs only a python3 (>= 3.9) on PATH: the official slim image by default, or the
# debootstrapped Debian that scripts/ci_docker.sh imports when no registry is reachable.
# The worker program itself (sandboxes/worker.py) is passed on the container's command line
# when the backend starts it, so this image never goes stale when the worker changes.
ARG BASE=python:3.12-slim

FROM ${BASE} AS sandbox
# Fail the build here, not at the first snippet, when the interpreter lacks what the worker uses.
RUN python3 -c "import ctypes, json, os, resource, select, shutil; os.pidfd_open" \
 # Snippets run as this unprivileged user (the backend also passes --user 10001:10001).
 && (getent group sandbox || groupadd --gid 10001 sandbox) \
 && (getent passwd sandbox || useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin sandbox) \
 # No setuid/setgid programs: nothing to escalate through even if no-new-privileges were off.
 && find / -xdev -perm /6000 -type f -exec chmod a-s {} + \
 && rm -rf /var/cache/apt /var/lib/apt/lists/*
ENV LANG=C.UTF-8 PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /tmp
CMD ["python3", "-c", "print('appo sandbox image: started by sandboxes/docker_backend.py')"]

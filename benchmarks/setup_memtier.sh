#!/bin/sh
# Build memtier_benchmark from source for benchmarks/resp_vs_redis.py, which runs it when it is on the PATH.
# For benchmark machines only (never CI); nothing of memtier's is kept in this repository.
#
#   benchmarks/setup_memtier.sh [PREFIX]     (default PREFIX: $HOME/.local; the binary goes to PREFIX/bin)
#
# Needs git, a C++ compiler, autoconf, automake, libtool, pkg-config and the libevent and OpenSSL headers
# (Debian/Ubuntu: apt-get install build-essential autoconf automake libtool pkg-config libevent-dev
# libssl-dev zlib1g-dev libpcre3-dev).
set -eu
PREFIX=${1:-$HOME/.local}
VERSION=${MEMTIER_VERSION:-2.1.1}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone --depth 1 --branch "$VERSION" https://github.com/RedisLabs/memtier_benchmark.git "$WORK/memtier"
cd "$WORK/memtier"
autoreconf -ivf
./configure --prefix="$PREFIX"
make -j"$(nproc)"
make install
echo "installed $PREFIX/bin/memtier_benchmark; put $PREFIX/bin on the PATH to have resp_vs_redis.py run it"

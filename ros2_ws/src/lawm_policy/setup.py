from setuptools import find_packages, setup

package_name = "lawm_policy"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    # `colcon test` runs pytest over test/ when pytest is a test requirement.
    extras_require={"test": ["pytest"]},
    zip_safe=True,
    maintainer="LAWM maintainers",
    maintainer_email="lawm@example.org",
    description="LAWM real-time policy runtime and ROS 2 nodes",
    license="MIT",
    entry_points={
        "console_scripts": [
            "instruction_publisher = lawm_policy.instruction_publisher:main",
            "realsense_camera = lawm_policy.realsense_camera:main",
            "policy_node = lawm_policy.policy_node:main",
            "libero_bridge = lawm_policy.libero_bridge:main",
            "eval_replay = lawm_policy.eval_replay.cli:main",
        ],
    },
)

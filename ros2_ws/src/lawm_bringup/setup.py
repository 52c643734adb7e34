from glob import glob

from setuptools import setup

package_name = "lawm_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=[],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        # Params files and the Fast DDS profile the launch files and the Docker image point at.
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    # `colcon test` runs pytest over test/ when pytest is a test requirement.
    extras_require={"test": ["pytest"]},
    zip_safe=True,
    maintainer="LAWM maintainers",
    maintainer_email="lawm@example.org",
    description="Launch and parameter files for the LAWM robot stack",
    license="MIT",
)

# A plain Python package that colcon also builds (ament_python), so the ROS image carries it;
# `make setup` installs it into .venv with `pip install -e`.
from setuptools import find_packages, setup

package_name = "lawm_sim"

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
    description="LAWM simulation",
    license="MIT",
)

"""Process helpers for tests that run real ROS 2 nodes (see ``lawm.rosproc``)."""

from lawm.rosproc import (  # noqa: F401 - re-exported for the tests
    ROOT,
    WS_INSTALL,
    NodeProcess,
    WaitError,
    executable,
    node_env,
    wait_for_publishers,
    wait_for_subscribers,
    wait_until,
)

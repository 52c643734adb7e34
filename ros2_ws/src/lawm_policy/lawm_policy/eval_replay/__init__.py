"""Rosbag replay evaluation (the ``eval_replay`` command, ``cli``).

``index``: which bag topics play which role and the aligned frames (``lawm_core.bags``);
``offline``: the exported model through the runtime core, no ROS; ``live``: the bag played into
the running graph (rclpy) and the policy node's answers matched to their frames; ``report``:
metrics and the files written. Only ``live`` (and ``cli``, for the live mode) needs rclpy.
"""

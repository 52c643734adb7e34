"""Rosbag replay evaluation (the ``eval_replay`` command, ``cli``).

``index``: which bag topics play which role and the aligned steps (``lawm_core.bags``; offline
at the model's control rate); ``proprio``: the model's robot state from the bag's array,
PoseStamped and JointState topics; ``offline``: the exported model through the runtime core,
no ROS; ``live``: the bag played into the running graph (rclpy) and the policy node's answers
matched to their frames; ``report``: metrics (the gripper by the model's declared convention)
and the files written. Only ``live`` (and ``cli``, for the live mode) needs rclpy.
"""

"""LAWM policy runtime: onnxruntime core (no torch, no rclpy) and thin ROS 2 nodes around it."""

"""Runtime core: numpy + onnxruntime; imports neither torch nor rclpy."""

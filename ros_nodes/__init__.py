"""ROS 2 nodes: thin rclpy wiring around plain-Python node logic."""

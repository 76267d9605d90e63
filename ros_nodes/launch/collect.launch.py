"""ROS 2 launch file for a full ROS install: the collection graph with the parameters of ``rlstack collect``.

    ros2 launch ros_nodes/launch/collect.launch.py                      # sim robot + expert teleop
    ros2 launch ros_nodes/launch/collect.launch.py overrides:="robot=external teleop=keyboard store=data/real.zarr"

The parameters come from the same Hydra config (``configs/collect.yaml``) through
``ros_nodes.collect.node_params``, so both ways of starting the graph run identical nodes. The launch
file only starts the nodes; start, stop and success are then the recorder's services
(``ros2 service call /recorder/start std_srvs/srv/Trigger``) or the keyboard teleop's keys.
"""

from __future__ import annotations

import sys
from typing import Any

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration


def _nodes(context: Any, *args: Any, **kwargs: Any) -> list[Any]:
    from ros_nodes.collect import load_config, node_params
    from ros_nodes.common import write_params_file

    overrides = LaunchConfiguration("overrides").perform(context).split()
    cfg, _ = load_config(overrides)
    actions = []
    for name, params in node_params(cfg).items():
        if name == "sim_robot":
            params = {**params, "autostart": True}  # no conductor here: the sim runs from the start
        params_file = write_params_file(name, params)
        actions.append(ExecuteProcess(
            cmd=[sys.executable, "-m", f"ros_nodes.{name}", "--ros-args", "--params-file", str(params_file)],
            name=name, output="screen",
            # a person's teleop reads this terminal (keys work next to every device)
            emulate_tty=name == "teleop" and cfg.teleop.mode != "expert",
        ))
    return actions


def generate_launch_description() -> LaunchDescription:
    """sim_robot (for robot=sim), teleop and recorder as processes."""
    return LaunchDescription([
        DeclareLaunchArgument("overrides", default_value="",
                              description="Hydra overrides of configs/collect.yaml, space separated"),
        OpaqueFunction(function=_nodes),
    ])

"""`RobotSimEnv`: one Gymnasium env class for any (task, robot, fidelity).

The fidelity only selects a MuJoCo model named in the robot config (`models:`: `twin`,
`reduced`, ... or any name a user adds there); observation and action spaces, reward and
termination come from the task and are the same for every fidelity.
Model-specific sensor effects are declared in the model XML as custom numerics, so a model
file carries everything that makes it a fidelity:

    <custom>
      <numeric name="mfpg_sensor_latency_steps" data="1"/>  <!-- observation delay, steps -->
      <numeric name="mfpg_quantise_encoders" data="1"/>     <!-- positions to encoder counts -->
    </custom>

Joints and actuators in the XML carry the robot config's joint names; each actuated joint has
one actuator of the same name whose `ctrl` is the physical command (volts, N m or a position
target; see `sim.actuation`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from sim.actuation import action_to_command
from sim.robot_config import RobotConfig, load_robot_config
from sim.starts import sample_start_state
from sim.state import RobotState
from sim.tasks.base import Task, TaskState


def _custom_numeric(model: mujoco.MjModel, name: str, default: float) -> float:
    idx = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, name)
    return default if idx < 0 else float(model.numeric_data[model.numeric_adr[idx]])


class SensorModel:
    """What the device measures: encoder quantisation and a latency of whole control steps."""

    def __init__(self, robot: RobotConfig, latency_steps: int, quantise: bool) -> None:
        self.latency_steps = latency_steps
        counts = [j.encoder_counts_per_rev for j in robot.joints]
        self.resolution = np.array(
            [2 * np.pi / c if (quantise and c) else 0.0 for c in counts], dtype=np.float64
        )
        self._buffer: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=latency_steps + 1)

    def quantise(self, q: np.ndarray) -> np.ndarray:
        res = self.resolution
        return np.where(res > 0, np.round(q / np.where(res > 0, res, 1.0)) * res, q)

    def reset(self, q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fill the delay line with the start state; return the first measurement."""
        self._buffer.clear()
        for _ in range(self.latency_steps + 1):
            self._buffer.append((q.copy(), v.copy()))
        return self.quantise(q), v.copy()

    def measure(self, q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Push the true state, return the measurement `latency_steps` control steps old."""
        self._buffer.append((q.copy(), v.copy()))
        q_old, v_old = self._buffer[0]
        return self.quantise(q_old), v_old.copy()


class RobotSimEnv(gym.Env[np.ndarray, np.ndarray]):
    """A task on a simulated robot at one fidelity: a model named in the robot config."""

    metadata = {"render_modes": [], "render_fps": 50}

    def __init__(
        self,
        task: Task,
        fidelity: str = "twin",
        robot_config: str | RobotConfig | None = None,
    ) -> None:
        self.task = task
        self.fidelity = fidelity
        robot = robot_config if robot_config is not None else task.robot
        self.robot = robot if isinstance(robot, RobotConfig) else load_robot_config(robot)
        model_path = self.robot.model_path(fidelity)  # ValueError naming the robot's models
        self.model = mujoco.MjModel.from_xml_path(str(model_path))
        self.data = mujoco.MjData(self.model)
        self.n_substeps = self._substeps()
        self.joint_names = self.robot.joint_names
        self.qpos_adr, self.qvel_adr = self._joint_addresses()
        self.act_ids = self._actuator_ids()
        self.sensor = SensorModel(
            self.robot,
            latency_steps=int(_custom_numeric(self.model, "mfpg_sensor_latency_steps", 0)),
            quantise=bool(_custom_numeric(self.model, "mfpg_quantise_encoders", 0)),
        )
        n_act = len(self.robot.actuated_joints)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n_act,), dtype=np.float32)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(task.obs_dim,), dtype=np.float32
        )
        self.metadata = {**self.metadata, "render_fps": int(round(self.robot.control_rate_hz))}
        self._task_state: TaskState = {}
        self._q_meas = np.zeros(len(self.joint_names))
        self._v_meas = np.zeros(len(self.joint_names))

    # -- construction helpers -------------------------------------------------------------
    def _substeps(self) -> int:
        ratio = self.robot.control_dt / self.model.opt.timestep
        n = int(round(ratio))
        if n < 1 or abs(ratio - n) > 1e-6:
            raise ValueError(
                f"{self.robot.model_path(self.fidelity)}: control period "
                f"{self.robot.control_dt} s is not a whole number of timesteps "
                f"({self.model.opt.timestep} s)"
            )
        return n

    def _joint_addresses(self) -> tuple[np.ndarray, np.ndarray]:
        qadr, vadr = [], []
        for name in self.joint_names:
            jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                raise ValueError(f"model for fidelity '{self.fidelity}' has no joint '{name}'")
            qadr.append(self.model.jnt_qposadr[jid])
            vadr.append(self.model.jnt_dofadr[jid])
        return np.array(qadr), np.array(vadr)

    def _actuator_ids(self) -> np.ndarray:
        ids = []
        for name in self.robot.actuated_joints:
            aid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
            if aid < 0:
                raise ValueError(f"model for fidelity '{self.fidelity}' has no actuator '{name}'")
            ids.append(aid)
        return np.array(ids)

    # -- state access ---------------------------------------------------------------------
    def true_joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """The simulator's exact joint positions and velocities (robot joint order)."""
        return self.data.qpos[self.qpos_adr].copy(), self.data.qvel[self.qvel_adr].copy()

    def get_state(self) -> RobotState:
        """The measured state (as a device would report it) with the task variables."""
        return RobotState.from_arrays(
            self.joint_names, self._q_meas, self._v_meas, self._task_state
        )

    def _observation(self) -> np.ndarray:
        obs = self.task.observe(self._q_meas[None], self._v_meas[None], self._batched_task())
        return obs[0].astype(np.float32)

    def _batched_task(self) -> TaskState:
        return {k: np.asarray(v, dtype=np.float64)[None] for k, v in self._task_state.items()}

    # -- Gymnasium API ----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start at home plus uniform noise within the reset bounds (`sample_start_state`)."""
        super().reset(seed=seed)
        return self._start(*sample_start_state(self.robot, self.task, self.np_random))

    def reset_to(
        self, state: RobotState, *, seed: int | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start exactly from `state` (joints matched by name; task variables copied)."""
        super().reset(seed=seed)
        q, v = state.arrays(self.joint_names)
        task = {k: np.asarray(val, dtype=np.float64) for k, val in state.task.items()}
        return self._start(q, v, task)

    def _start(
        self, q: np.ndarray, v: np.ndarray, task: TaskState
    ) -> tuple[np.ndarray, dict[str, Any]]:
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self.qpos_adr] = q
        self.data.qvel[self.qvel_adr] = v
        self._hold_ctrl()
        mujoco.mj_forward(self.model, self.data)
        self._task_state = {k: np.asarray(val, dtype=np.float64) for k, val in task.items()}
        self._q_meas, self._v_meas = self.sensor.reset(*self.true_joint_state())
        return self._observation(), {"state": self.get_state()}

    def _hold_ctrl(self) -> None:
        """Idle command at start: hold position for servos, zero effort otherwise."""
        if self.robot.actuation.type == "position":
            act_q = [
                self.data.qpos[self.qpos_adr[self.joint_names.index(n)]]
                for n in self.robot.actuated_joints
            ]
            self.data.ctrl[self.act_ids] = act_q
        else:
            self.data.ctrl[self.act_ids] = 0.0

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        action = np.clip(action, -1.0, 1.0)
        command = action_to_command(self.robot, action)
        self.data.ctrl[self.act_ids] = command
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self._q_meas, self._v_meas = self.sensor.measure(*self.true_joint_state())
        q, v, task = self._q_meas[None], self._v_meas[None], self._batched_task()
        reward = float(self.task.reward(q, v, action[None], task)[0])
        terminated = bool(self.task.terminated(q, v, task)[0])
        info = {"command": command, "action_sent": action}
        return self._observation(), reward, terminated, False, info

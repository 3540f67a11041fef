"""Ground an LF model on recorded HF data: fit a few physical parameters of its MuJoCo XML.

    data = load_replay_data(run_dir, robot)        # <run>/hf_episodes/*.npz
    result = calibrate(data, robot, "reduced_gap", ["length.pendulum", "mass.arm"])
    write_model(result, "furuta_calibrated.xml")

The fit minimises the prediction error of the measured joint states over short open-loop
replays: from a measured state s_t the model is started (as `RobotSimEnv.reset_to` starts it)
and driven for `k` control steps by the recorded actions, mapped to commands as
`RobotSimEnv.step` maps them (clip to [-1, 1], `sim.actuation.action_to_command`, held for the
control period); its joint states after each step are compared with the measured s_{t+1..t+k}.
A device that reports its state `d` control steps late (the twin: one) is matched by replaying
the actions from a_{t-d}; the `d` with the lowest error (0..`max_latency`) is written into the
calibrated model as its sensor latency (`mfpg_sensor_latency_steps`), so that the model's
closed loop sees the same delay.

Error: each joint position and velocity is divided by its RMS change over the replay horizon
in the data (how far "nothing moves" is off), squared and averaged over starts, steps and
columns; 1.0 is as bad as predicting no motion.

Parameters (`available_params`), each bounded and searched in log space (damping and friction,
which may be 0: over four decades below their bound, and 0):

    length.J        link length of joint J's body: its geoms, centre of mass and child bodies
                    scale with it, its inertia as a uniform rod's (x length^2)
    mass.J          mass of joint J's body, its inertia in proportion
    damping.J       viscous damping of joint J (N m s/rad), 0 .. inertia / 20 ms
    friction.J      Coulomb friction (frictionloss) of joint J, 0 .. the actuator's full effort / 4
    gain.J          gain of joint J's actuator (for position servos: kp, the bias with it)
    force_limit.J   force range of joint J's actuator (position servos: their speed limit)

The optimiser is a bounded Nelder-Mead in the unit box of the parameters (scipy is not a
dependency), restarted once from its best point. Masses and actuator gain of an effort-driven
joint are not separately identifiable (scaling all of them together leaves the motion alone),
hence gains are not in the default set of such robots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np
from mujoco import rollout

from mfpg_robot.episodes import read_segment, segment_key
from sim.actuation import action_to_command
from sim.robot_config import RobotConfig

LATENCY_NUMERIC = "mfpg_sensor_latency_steps"
#: Search bounds of the log-space parameters, as factors of the model's value.
LOG_BOUNDS = {"length": (0.5, 2.0), "mass": (0.25, 4.0), "gain": (0.25, 4.0),
              "force_limit": (0.25, 4.0)}
#: Damping bound: the joint's inertia (at qpos0) over this time constant (s).
DAMPING_TAU_S = 0.02
#: Coulomb friction bound: this share of the actuator's full effort (or of gravity's torque).
FRICTION_SHARE = 0.25
KINDS = ("length", "mass", "damping", "friction", "gain", "force_limit")


class CalibrationError(ValueError):
    """Bad input to a calibration (no episodes, unknown model or parameter); the message says
    what is wrong and how to fix it."""


# ---- data ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Episode:
    """One recorded HF episode: measured joint states (robot joint order) and commands."""

    q: np.ndarray  # (T, n_joints) measured positions at each row
    v: np.ndarray  # (T, n_joints) measured velocities
    command: np.ndarray  # (T, n_actuated) physical command applied after row t


@dataclass(frozen=True)
class ReplayData:
    episodes: list[Episode]
    files: int

    @property
    def steps(self) -> int:
        return sum(len(e.q) for e in self.episodes)


def load_replay_data(run_dir: str | Path, robot: RobotConfig, *,
                     device: bool = False) -> ReplayData:
    """The episodes of `<run_dir>/hf_episodes/` (pieces of an episode joined in order), their
    actions mapped to the commands that reached the robot: as `RobotSimEnv.step` maps them
    for a simulated HF env, through the host safety layer for a device (`device`, a session
    with `hf.fidelity: robot`: `safety_commands`)."""
    folder = Path(run_dir) / "hf_episodes"
    if not Path(run_dir).is_dir():
        raise CalibrationError(f"{run_dir}: not a folder; pass a run folder (the one with "
                               "config.yaml and hf_episodes/ that `mfpg-robot train` writes)")
    if not folder.is_dir():
        raise CalibrationError(f"{run_dir}: no hf_episodes/ folder in it; pass a run folder of "
                               "a session (HF episodes are recorded there as they complete)")
    paths = sorted((k, p) for p in folder.iterdir() if (k := segment_key(p)) is not None)
    by_episode: dict[int, list] = {}
    for (ep, _), path in paths:
        by_episode.setdefault(ep, []).append(read_segment(path))
    episodes = []
    for segs in by_episode.values():
        if any(s.states is None for s in segs):
            raise CalibrationError(f"{folder}: episode {segs[0].episode} has no measured "
                                   "states; only mfpg robot tasks record them")
        pairs = [st.arrays(robot.joint_names) for s in segs for st in s.states]
        q, v = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        actions = np.concatenate([s.rows["actions"] for s in segs]).astype(np.float64)
        if device:
            command = safety_commands(robot, q, v, actions)
        else:
            command = action_to_command(robot, np.clip(actions, -1.0, 1.0))
        episodes.append(Episode(q, v, command))
    if not episodes:
        raise CalibrationError(f"{folder}: no HF episode files (ep_*.npz); run a session "
                               "(or a dry run) first, then calibrate from its folder")
    return ReplayData(episodes, len(paths))


def safety_commands(robot: RobotConfig, q: np.ndarray, v: np.ndarray,
                    actions: np.ndarray) -> np.ndarray:
    """The commands a device got for one episode's recorded actions: the host safety layer's
    filter (clip, rate limit, soft limits, velocity margin) replayed on the measured states,
    from the idle command at the episode's start; zero effort (servos: the held target) from
    a rejected action on, as `RobotEnv` stops there."""
    from hardware.driver import DeviceState
    from hardware.safety import SafetyLayer

    layer = SafetyLayer(robot)
    out = np.empty((len(actions), len(robot.actuated_joints)))
    for t, a in enumerate(actions):
        state = DeviceState(0.0, 0.0, q[t], v[t], None, None, True, False, ())
        if t == 0:
            layer.start(state)
        result = layer.filter_action(a, state) if layer.latched is None else None
        if result is None or result.command is None:
            out[t:] = layer.previous_command if layer.position_servo else 0.0
            break
        out[t] = result.command
        layer.commit(result.command)
    return out


# ---- parameters ----------------------------------------------------------------------------
#: Decades spanned by the parameters that may be 0 (damping, friction): 0 .. upper.
ZERO_DECADES = 4.0


@dataclass(frozen=True)
class Param:
    """One fitted parameter: its value in the model and its search bounds.

    The search runs over u in [0, 1]: `log` maps it to lower * (upper / lower)^u; otherwise
    (lower = 0) to upper * (10^(ZERO_DECADES u) - 1) / (10^ZERO_DECADES - 1), log-like over
    ZERO_DECADES decades below upper and exactly 0 at u = 0.
    """

    name: str  # KIND.JOINT
    initial: float
    lower: float
    upper: float
    log: bool

    @property
    def kind(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def joint(self) -> str:
        return self.name.split(".", 1)[1]

    def to_unit(self, value: float) -> float:
        if self.log:
            u = math.log(value / self.lower) / math.log(self.upper / self.lower)
        else:
            span = 10.0 ** ZERO_DECADES - 1.0
            u = math.log10(1.0 + max(value, 0.0) / self.upper * span) / ZERO_DECADES
        return min(max(u, 0.0), 1.0)

    def from_unit(self, u: float) -> float:
        u = min(max(u, 0.0), 1.0)
        if self.log:
            return self.lower * (self.upper / self.lower) ** u
        return self.upper * (10.0 ** (ZERO_DECADES * u) - 1.0) / (10.0 ** ZERO_DECADES - 1.0)


def _joint_body(spec: mujoco.MjSpec, joint: str) -> mujoco.MjsBody:
    return spec.joint(joint).parent


_ROD_GEOMS = (mujoco.mjtGeom.mjGEOM_CAPSULE, mujoco.mjtGeom.mjGEOM_CYLINDER)


def _has_fromto(g: mujoco.MjsGeom) -> bool:
    """Whether the geom is placed by `fromto` (MjSpec marks an unset one with NaN)."""
    return bool(np.all(np.isfinite(g.fromto)) and np.any(g.fromto != 0))


def _link_length(body: mujoco.MjsBody) -> float:
    """A body's length: how far its farthest rod geom (capsule, cylinder) or child reaches."""
    best = 0.0
    for g in body.geoms:
        if _has_fromto(g):
            best = max(best, float(np.linalg.norm(g.fromto[3:])),
                       float(np.linalg.norm(g.fromto[:3])))
        elif g.type in _ROD_GEOMS:
            best = max(best, float(np.linalg.norm(g.pos)) + float(g.size[1]))
    for child in body.bodies:
        best = max(best, float(np.linalg.norm(child.pos)))
    return best


def _actuator(spec: mujoco.MjsActuator, joint: str) -> mujoco.MjsActuator | None:
    return next((a for a in spec.actuators if a.target == joint), None)


def _body_mass(body: mujoco.MjsBody) -> float:
    """Mass of a body: its inertial element, else the sum of its geoms' masses."""
    if body.explicitinertial:
        return float(body.mass)
    return float(sum(g.mass for g in body.geoms))


def available_params(model_path: Path, robot: RobotConfig) -> dict[str, Param]:
    """Every parameter `model_path` lets one fit, by name (module docstring)."""
    spec = mujoco.MjSpec.from_file(str(model_path))
    model = spec.compile()
    out: dict[str, Param] = {}
    for name in robot.joint_names:
        jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if jid < 0:
            continue
        body = _joint_body(spec, name)
        length = _link_length(body)
        if length > 0:
            out[f"length.{name}"] = Param(f"length.{name}", length,
                                          *(f * length for f in LOG_BOUNDS["length"]), True)
        mass = _body_mass(body)
        if mass > 0:
            out[f"mass.{name}"] = Param(f"mass.{name}", mass,
                                        *(f * mass for f in LOG_BOUNDS["mass"]), True)
        inertia = float(model.dof_M0[model.jnt_dofadr[jid]])
        joint = spec.joint(name)
        damping = float(joint.damping[0])
        out[f"damping.{name}"] = Param(f"damping.{name}", damping, 0.0,
                                       max(inertia / DAMPING_TAU_S, 2 * damping), False)
        act = _actuator(spec, name)
        effort = _full_effort(act) if act is not None else _gravity_torque(model, jid)
        friction = float(joint.frictionloss)
        out[f"friction.{name}"] = Param(f"friction.{name}", friction, 0.0,
                                        max(FRICTION_SHARE * effort, 2 * friction), False)
        if act is not None:
            gain = float(act.gainprm[0])
            if gain > 0:
                out[f"gain.{name}"] = Param(f"gain.{name}", gain,
                                            *(f * gain for f in LOG_BOUNDS["gain"]), True)
            if act.forcelimited != mujoco.mjtLimited.mjLIMITED_FALSE and act.forcerange[1] > 0:
                top = float(act.forcerange[1])
                out[f"force_limit.{name}"] = Param(
                    f"force_limit.{name}", top, *(f * top for f in LOG_BOUNDS["force_limit"]),
                    True)
    return out


def _full_effort(act: mujoco.MjsActuator) -> float:
    """|force| of the actuator at its largest control (gain x ctrl limit), or its force range."""
    if act.forcelimited != mujoco.mjtLimited.mjLIMITED_FALSE and act.forcerange[1] > 0:
        return float(act.forcerange[1])
    return float(abs(act.gainprm[0]) * max(abs(act.ctrlrange[0]), abs(act.ctrlrange[1]), 1.0))


def _gravity_torque(model: mujoco.MjModel, jid: int) -> float:
    """m g r of the subtree hanging from a joint (the largest static torque it sees)."""
    body = model.jnt_bodyid[jid]
    g = float(np.linalg.norm(model.opt.gravity))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    com = data.subtree_com[body] - data.xanchor[jid]
    return float(model.body_subtreemass[body] * g * np.linalg.norm(com)) or 1e-3


def default_params(robot: RobotConfig, available: dict[str, Param]) -> list[str]:
    """Effort-driven robots: link lengths of passive joints, masses and damping of every joint;
    position servos: actuator gains and force limits (their time constant and speed)."""
    if robot.actuation.type == "position":
        kinds = {j: ("gain", "force_limit") for j in robot.actuated_joints}
    else:
        kinds = {j.name: ("mass", "damping") if j.actuated else ("length", "mass", "damping")
                 for j in robot.joints}
    return [f"{k}.{j}" for j, ks in kinds.items() for k in ks if f"{k}.{j}" in available]


def apply_params(spec: mujoco.MjSpec, params: dict[str, Param], values: dict[str, float],
                 latency: int | None = None) -> None:
    """Edit `spec` in place: every named parameter to its value (module docstring)."""
    for name, value in values.items():
        p = params[name]
        joint = spec.joint(p.joint)
        body = joint.parent
        scale = value / p.initial if p.initial else 0.0
        if p.kind == "length":
            _scale_length(body, scale)
        elif p.kind == "mass":
            if body.explicitinertial:
                body.mass = body.mass * scale
                body.inertia = body.inertia * scale
            else:
                for g in body.geoms:
                    g.mass = g.mass * scale
        elif p.kind == "damping":
            damping = np.array(joint.damping)
            damping[0] = value
            joint.damping = damping
        elif p.kind == "friction":
            joint.frictionloss = value
        else:
            act = _actuator(spec, p.joint)
            if p.kind == "gain":
                gain, bias = np.array(act.gainprm), np.array(act.biasprm)
                if act.biastype == mujoco.mjtBias.mjBIAS_AFFINE and bias[1] == -gain[0]:
                    bias[1] = -value  # a position servo: kp and its bias -kp q together
                gain[0] = value
                act.gainprm, act.biasprm = gain, bias
            else:
                act.forcerange = np.array([-value, value])
    if latency is not None:
        numeric = next((n for n in spec.numerics if n.name == LATENCY_NUMERIC), None)
        if numeric is None:
            numeric = spec.add_numeric()
            numeric.name = LATENCY_NUMERIC
        numeric.data = [float(latency)]


def _scale_length(body: mujoco.MjsBody, s: float) -> None:
    """Stretch a link by `s`: geoms, sites, centre of mass, child bodies; inertia x s^2."""
    for g in body.geoms:
        if _has_fromto(g):
            g.fromto = g.fromto * s
        else:
            g.pos = g.pos * s
            if g.type in _ROD_GEOMS:
                g.size = g.size * np.array([1.0, s, 1.0])
    for site in body.sites:
        site.pos = site.pos * s
    for child in body.bodies:
        child.pos = child.pos * s
    if body.explicitinertial:
        body.ipos = body.ipos * s
        body.inertia = body.inertia * s * s


# ---- replay error --------------------------------------------------------------------------
@dataclass
class Replays:
    """The open-loop replays of one latency: start states, commands, measured targets."""

    q0: np.ndarray  # (N, n_joints)
    v0: np.ndarray
    command: np.ndarray  # (N, k, n_actuated)
    target: np.ndarray  # (N, k, 2 * n_joints): measured q, v after each step
    scale: np.ndarray  # (2 * n_joints,) RMS change of each column over the horizon


def pick_starts(data: ReplayData, k: int, max_latency: int, max_starts: int,
                rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to `max_starts` (episode, row) replay starts, drawn without replacement among the
    rows with `max_latency` rows before them and `k` after (every latency replays the same)."""
    starts = [(i, t) for i, e in enumerate(data.episodes)
              for t in range(max_latency, len(e.q) - k)]
    if not starts:
        raise CalibrationError(f"no episode is longer than k + latency = {k + max_latency} "
                               "steps; record longer episodes or lower k")
    pick = np.sort(rng.choice(len(starts), size=min(max_starts, len(starts)), replace=False))
    return [starts[j] for j in pick]


def build_replays(data: ReplayData, starts: list[tuple[int, int]], k: int,
                  latency: int) -> Replays:
    """The replays of `k` steps from `starts`, the actions taken from row t - `latency`."""
    eps = data.episodes
    q0 = np.array([eps[i].q[t] for i, t in starts])
    v0 = np.array([eps[i].v[t] for i, t in starts])
    cmd = np.array([eps[i].command[t - latency:t - latency + k] for i, t in starts])
    target = np.array([np.concatenate([eps[i].q[t + 1:t + k + 1], eps[i].v[t + 1:t + k + 1]],
                                      axis=1) for i, t in starts])
    change = target - np.concatenate([q0, v0], axis=1)[:, None, :]
    scale = np.sqrt(np.mean(change ** 2, axis=(0, 1)))
    return Replays(q0, v0, cmd, target, np.where(scale > 1e-9, scale, 1.0))


class Replayer:
    """Runs the replays on a compiled model with `mujoco.rollout`; returns the predictions."""

    def __init__(self, robot: RobotConfig, replays: Replays) -> None:
        self.robot = robot
        self.replays = replays

    def predict(self, model: mujoco.MjModel) -> np.ndarray:
        """(N, k, 2 * n_joints) joint states after each control step."""
        r = self.replays
        n_sub = int(round(self.robot.control_dt / model.opt.timestep))
        jids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j)
                for j in self.robot.joint_names]
        qadr, vadr = model.jnt_qposadr[jids], model.jnt_dofadr[jids]
        data = mujoco.MjData(model)
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        size = mujoco.mj_stateSize(model, spec)
        mujoco.mj_resetData(model, data)
        mujoco.mj_forward(model, data)
        template = np.empty(size)
        mujoco.mj_getState(model, data, template, spec)
        # where qpos and qvel sit in the state vector: mark them and look
        data.qpos[:], data.qvel[:] = np.arange(model.nq) + 1e6, np.arange(model.nv) + 2e6
        marked = np.empty(size)
        mujoco.mj_getState(model, data, marked, spec)
        q_slot = [int(np.flatnonzero(marked == 1e6 + a)[0]) for a in qadr]
        v_slot = [int(np.flatnonzero(marked == 2e6 + a)[0]) for a in vadr]
        init = np.repeat(template[None], len(r.q0), axis=0)
        init[:, q_slot], init[:, v_slot] = r.q0, r.v0
        act_ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, j)
                   for j in self.robot.actuated_joints]
        ctrl = np.zeros((len(r.q0), r.command.shape[1], model.nu))
        ctrl[:, :, act_ids] = r.command
        ctrl = np.repeat(ctrl, n_sub, axis=1)
        state, _ = rollout.rollout(model, data, init, ctrl)
        state = state[:, n_sub - 1::n_sub]
        return np.concatenate([state[..., q_slot], state[..., v_slot]], axis=2)

    def error(self, model: mujoco.MjModel) -> float:
        """Mean normalised squared prediction error (module docstring)."""
        pred = self.predict(model)
        if not np.all(np.isfinite(pred)):
            return math.inf
        diff = self._diff(pred)
        return float(np.mean((diff / self.replays.scale) ** 2))

    def rms(self, model: mujoco.MjModel) -> np.ndarray:
        """(2 * n_joints,) RMS error of each position and velocity, in the joints' units."""
        return np.sqrt(np.mean(self._diff(self.predict(model)) ** 2, axis=(0, 1)))

    def _diff(self, pred: np.ndarray) -> np.ndarray:
        diff = pred - self.replays.target
        nj = len(self.robot.joint_names)
        rad = [i for i, j in enumerate(self.robot.joints) if j.unit == "rad"]
        diff[..., rad] = (diff[..., rad] + np.pi) % (2 * np.pi) - np.pi
        return diff[..., : 2 * nj]


# ---- optimiser -----------------------------------------------------------------------------
def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, step: float = 0.15,
                max_evals: int = 300, tol: float = 1e-7) -> tuple[np.ndarray, float, int]:
    """Minimise `f` over the unit box from `x0` (points clipped into it); returns
    (best x, f(best x), evaluations)."""
    n = len(x0)
    evals = 0

    def fx(x: np.ndarray) -> float:
        nonlocal evals
        evals += 1
        return f(np.clip(x, 0.0, 1.0))

    simplex = [np.clip(x0, 0.0, 1.0)]
    for i in range(n):
        x = simplex[0].copy()
        x[i] = x[i] + step if x[i] + step <= 1.0 else x[i] - step
        simplex.append(x)
    values = [fx(x) for x in simplex]
    while evals < max_evals:
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if abs(values[-1] - values[0]) <= tol * (abs(values[0]) + tol):
            break
        centroid = np.mean(simplex[:-1], axis=0)
        worst = simplex[-1]
        xr = np.clip(centroid + (centroid - worst), 0.0, 1.0)
        fr = fx(xr)
        if fr < values[0]:
            xe = np.clip(centroid + 2.0 * (centroid - worst), 0.0, 1.0)
            fe = fx(xe)
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * ((xr if fr < values[-1] else worst) - centroid)
            fc = fx(xc)
            if fc < min(fr, values[-1]):
                simplex[-1], values[-1] = xc, fc
            else:  # shrink towards the best
                for i in range(1, n + 1):
                    simplex[i] = simplex[0] + 0.5 * (simplex[i] - simplex[0])
                    values[i] = fx(simplex[i])
    best = int(np.argmin(values))
    return np.clip(simplex[best], 0.0, 1.0), values[best], evals


# ---- the fit -------------------------------------------------------------------------------
@dataclass
class CalibrationResult:
    """What a calibration fitted, and how well the model predicts before and after."""

    model_path: Path
    params: dict[str, Param]
    before: dict[str, float]
    after: dict[str, float]
    latency_before: int
    latency: int
    error_before: float
    error_after: float
    rms_before: dict[str, float]
    rms_after: dict[str, float]
    replays: int
    k: int
    episodes: int
    steps: int
    evaluations: int
    wall_s: float
    latency_errors: dict[int, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"fitted on {self.replays} replays of {self.k} steps from {self.episodes} "
                 f"episodes ({self.steps} HF steps); {self.evaluations} model evaluations, "
                 f"{self.wall_s:.1f} s",
                 f"prediction error (1 = as bad as no motion): {self.error_before:.4g} -> "
                 f"{self.error_after:.4g} ({self.error_before / max(self.error_after, 1e-12):.1f}"
                 "x lower)",
                 f"sensor latency: {self.latency_before} -> {self.latency} control steps "
                 f"(errors at the fit: "
                 + ", ".join(f"{d}: {e:.4g}" for d, e in self.latency_errors.items()) + ")"]
        for name in self.after:
            p = self.params[name]
            lines.append(f"  {name:<22} {self.before[name]:.6g} -> {self.after[name]:.6g}  "
                         f"(bounds {p.lower:.4g} .. {p.upper:.4g})")
        lines.append("  RMS error at each step, before -> after:")
        for col in self.rms_after:
            lines.append(f"    {col:<22} {self.rms_before[col]:.4g} -> {self.rms_after[col]:.4g}")
        return "\n".join(lines)


def _compile(model_path: Path, params: dict[str, Param], values: dict[str, float],
             latency: int | None = None) -> mujoco.MjSpec:
    spec = mujoco.MjSpec.from_file(str(model_path))
    apply_params(spec, params, values, latency)
    return spec


def _rms_columns(robot: RobotConfig) -> list[str]:
    units = {j.name: j.unit for j in robot.joints}
    return ([f"{j} position ({units[j]})" for j in robot.joint_names]
            + [f"{j} velocity ({units[j]}/s)" for j in robot.joint_names])


def _model_latency(model: mujoco.MjModel) -> int:
    idx = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, LATENCY_NUMERIC)
    return 0 if idx < 0 else int(model.numeric_data[model.numeric_adr[idx]])


def calibrate(data: ReplayData, robot: RobotConfig, model: str, names: Sequence[str] | None = None,
              *, k: int = 20, max_starts: int = 2000, max_latency: int = 3,
              latency: int | None = None, max_evals: int = 300, seed: int = 0,
              log: Callable[[str], None] | None = None) -> CalibrationResult:
    """Fit `names` (default: `default_params`) of `robot`'s model `model` to `data`.

    `latency`: the device's sensor latency in control steps; None: the best of
    0..`max_latency` at the model's parameters, and again at the fitted ones.
    """
    t0 = time.perf_counter()
    if model not in robot.models:
        raise CalibrationError(f"robot '{robot.name}' has no model '{model}'; its models: "
                               f"{', '.join(robot.model_names)}")
    if k < 1:
        raise CalibrationError(f"k must be >= 1 control step, got {k}")
    path = robot.model_path(model)
    params = available_params(path, robot)
    names = list(names) if names else default_params(robot, params)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise CalibrationError(f"model '{model}' ({path.name}) has no parameter "
                               f"{', '.join(map(repr, unknown))}; it has: {', '.join(params)}")
    if not names:
        raise CalibrationError(f"no parameter to fit in model '{model}'")
    chosen = {n: params[n] for n in names}
    before = {n: p.initial for n, p in chosen.items()}
    base_latency = _model_latency(mujoco.MjModel.from_xml_path(str(path)))
    top = max_latency if latency is None else latency
    starts = pick_starts(data, k, top, max_starts, np.random.default_rng(seed))
    replayers = {d: Replayer(robot, build_replays(data, starts, k, d))
                 for d in (range(top + 1) if latency is None else [latency])}

    def values_of(u: np.ndarray) -> dict[str, float]:
        return {n: chosen[n].from_unit(float(x)) for n, x in zip(names, u, strict=True)}

    def model_of(values: dict[str, float]) -> mujoco.MjModel:
        return _compile(path, chosen, values).compile()

    def latency_errors(values: dict[str, float]) -> dict[int, float]:
        m = model_of(values)
        return {d: r.error(m) for d, r in replayers.items()}

    errs = latency_errors(before)
    d = min(errs, key=errs.get)
    best_u = np.array([chosen[n].to_unit(before[n]) for n in names])
    best_f, evals = errs[d], 0
    for rnd in range(2):  # the second round restarts from the first one's best point
        rep = replayers[d]
        u, f, n_eval = nelder_mead(lambda x, rep=rep: rep.error(model_of(values_of(x))),
                                   best_u, max_evals=max_evals)
        evals += n_eval
        if f < best_f:
            best_u, best_f = u, f
        errs = latency_errors(values_of(best_u))
        d = min(errs, key=errs.get)
        best_f = errs[d]
        if log:
            log(f"round {rnd + 1}: error {errs[d]:.4g} at latency {d}, {evals} evaluations")
    after = values_of(best_u)
    m_before, m_after = model_of(before), model_of(after)
    cols = _rms_columns(robot)
    rep = replayers[d]
    return CalibrationResult(
        model_path=path, params=chosen, before=before, after=after,
        latency_before=base_latency, latency=d, error_before=rep.error(m_before),
        error_after=rep.error(m_after),
        rms_before=dict(zip(cols, map(float, rep.rms(m_before)), strict=True)),
        rms_after=dict(zip(cols, map(float, rep.rms(m_after)), strict=True)),
        replays=len(starts), k=k, episodes=len(data.episodes), steps=data.steps,
        evaluations=evals, wall_s=time.perf_counter() - t0, latency_errors=errs)


def write_model(result: CalibrationResult, out: str | Path) -> Path:
    """The calibrated model as MJCF at `out`: the source model with the fitted parameters and
    latency, the calibration report as a comment on top."""
    out = Path(out)
    spec = _compile(result.model_path, result.params, result.after, result.latency)
    spec.modelname = f"{spec.modelname}_calibrated"
    xml = spec.to_xml()
    note = (f"Calibrated from {result.model_path.name} by `mfpg-robot calibrate`.\n"
            + result.summary()).replace("--", "- -")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<!-- {note}\n-->\n{xml}")
    return out

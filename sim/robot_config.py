"""Robots as data: the typed, validated schema of `configs/robots/*.yaml`.

A robot config names its joints in order (with units and limits), its actuation, control
rate, serial settings, safety thresholds, reset procedure (home pose, settling, homing gains,
start randomisation) and its MuJoCo models by name (`models:`). `twin` is required (the device
emulator runs it); any other name (`reduced`, `reduced_gap`, a user's calibrated model) is a
fidelity that envs and train configs can select (`fidelity: NAME`). A model file is a path
relative to `sim/models/`, or an absolute path.
It lives in `sim` because every layer reads it (sim builds the fidelities from it, hardware
talks to the device it describes, mfpg_robot trains on it) and `sim` depends on nothing of ours.

Loading fails early and precisely: an unknown key, a wrong type, a missing field or an
out-of-range value raises `ConfigError` naming the file, the key path and what is expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
ROBOTS_DIR = REPO_ROOT / "configs" / "robots"
MODELS_DIR = Path(__file__).resolve().parent / "models"

#: The model every robot must name: the high-fidelity stand-in the device emulator runs.
TWIN = "twin"
#: Fidelity names that are not models: `robot` is the physical (or emulated) device itself.
RESERVED_FIDELITIES = ("robot",)
#: What a model (fidelity) name may look like.
MODEL_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (`3e-4`) as floats.

    PyYAML follows YAML 1.1, which reads `3e-4` as a string; YAML 1.2 and users read a number.
    """


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with `YamlLoader` (safe; exponent floats are numbers)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (SafeLoader subclass)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, key path and the fix."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Limits(StrictModel):
    """A closed interval [lower, upper] in the joint's unit."""

    lower: float
    upper: float

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        if not self.lower < self.upper:
            raise ValueError(f"lower ({self.lower}) must be < upper ({self.upper})")
        return self


class JointConfig(StrictModel):
    """One joint, in the order the device reports it.

    `soft_limits`: no command may drive the joint past them (host safety clamps to them).
    `hard_limits`: a measured position outside them latches a safe stop. `None` for a
    continuous joint (e.g. a free pendulum).
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    unit: Literal["rad", "m"]
    actuated: bool
    soft_limits: Limits | None = None
    hard_limits: Limits | None = None
    velocity_limit: float = Field(gt=0, description="max |velocity| (unit/s) before a safe stop")
    encoder_counts_per_rev: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _soft_inside_hard(self) -> JointConfig:
        if (self.soft_limits is None) != (self.hard_limits is None):
            raise ValueError("give both soft_limits and hard_limits, or neither (continuous)")
        if self.soft_limits and self.hard_limits:
            s, h = self.soft_limits, self.hard_limits
            if s.lower < h.lower or s.upper > h.upper:
                raise ValueError("soft_limits must lie inside hard_limits")
        return self


class ActuationConfig(StrictModel):
    """How the device is commanded.

    `type`: voltage (V per actuated joint), torque (N m) or position (servo targets in the
    joint unit). `command_limit`: max |command| for voltage/torque (for position, the joint
    soft limits apply). `max_command_change`: rate limit, max change of a command per
    control step.
    """

    type: Literal["voltage", "torque", "position"]
    command_limit: float | None = Field(default=None, gt=0)
    max_command_change: float = Field(gt=0)

    @model_validator(mode="after")
    def _limit_for_effort(self) -> ActuationConfig:
        if self.type in ("voltage", "torque") and self.command_limit is None:
            raise ValueError(f"actuation type '{self.type}' needs command_limit")
        return self


class SerialConfig(StrictModel):
    """Serial link settings; `port` may be a device path, a pty path or a pyserial URL."""

    port: str = "/dev/ttyUSB0"
    baudrate: int = Field(gt=0)
    timeout_s: float = Field(gt=0, le=5.0, description="reply timeout per request")
    retries: int = Field(ge=0, le=10, description="re-sends after a timeout or bad frame")
    watchdog_ms: int = Field(ge=10, le=10_000, description="device torque-off timeout")


class DeviceConfig(StrictModel):
    """What the device must report in its handshake."""

    model_id: int = Field(ge=0, le=65535)
    protocol_version: int = Field(ge=1)
    has_current: bool
    has_temperature: bool


class SafetyConfig(StrictModel):
    """Host-side safety thresholds (docs/safety.md).

    `velocity_margin`: a joint faster than this fraction of its velocity limit gets no command
    pushing it further. `brake_decel`: the deceleration (unit/s^2) the braking-distance rule of
    voltage/torque robots assumes under full opposite effort; measure it on the robot (lower
    is more conservative). Required for voltage/torque actuation, not allowed for position.
    """

    stop_mode: Literal["torque_off", "hold"]
    max_temperature_c: float = Field(gt=0, le=150)
    max_current_a: float | None = Field(default=None, gt=0)
    stale_state_s: float = Field(gt=0, description="state older than this latches a stop")
    deadline_tolerance: int = Field(ge=0, description="consecutive missed deadlines tolerated")
    velocity_margin: float = Field(
        gt=0, le=1, description="fraction of velocity_limit above which speeding up is refused"
    )
    brake_decel: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="assumed braking deceleration (unit/s^2), voltage/torque robots only",
    )


class WorkspaceConfig(StrictModel):
    """Axis-aligned bounds (world frame, metres) for a named MuJoCo site, e.g. the tool tip."""

    site: str
    lower: list[float] = Field(min_length=3, max_length=3)
    upper: list[float] = Field(min_length=3, max_length=3)

    @model_validator(mode="after")
    def _ordered(self) -> WorkspaceConfig:
        if not all(lo < hi for lo, hi in zip(self.lower, self.upper, strict=True)):
            raise ValueError(f"lower {self.lower} must be < upper {self.upper} on every axis")
        return self


class HomingGains(StrictModel):
    """Reset controller of voltage/torque robots (command units: V or N m per joint unit).

    A PD law on the actuated joints plus feedback of the passive joints' velocity (damps a
    swinging pendulum through the arm), and a speed governor above `reset.homing_speed`.
    """

    kp: float = Field(gt=0, allow_inf_nan=False, description="effort per unit of position error")
    kd: float = Field(ge=0, allow_inf_nan=False, description="effort per unit/s of joint velocity")
    passive_damping: float = Field(
        allow_inf_nan=False,
        description="effort per unit/s of passive-joint velocity x cos(passive angle)",
    )
    speed_gain: float = Field(
        gt=0,
        allow_inf_nan=False,
        description="braking effort per unit/s an actuated joint exceeds homing_speed",
    )


class ResetConfig(StrictModel):
    """Home pose, settling criteria, reset controller and per-joint start randomisation.

    A joint is settled when actuated joints are within `settle_position_tolerance` of their
    goal (passive joints of their home value, modulo 2 pi) and every speed is below
    `settle_velocity_tolerance`, for `settle_s` in a row; a reset that does not settle within
    `max_settle_s` fails. `homing_gains`: required for voltage/torque actuation, not allowed
    for position servos (they track the homing reference themselves). `rest`: actuated joints
    -> a pose inside the soft limits from which the robot, with torque off, settles stably
    under gravity (e.g. a servo arm onto an end stop); parking moves there and switches torque
    off (joints it omits go home). None: parking holds the robot at home.
    """

    home: dict[str, float]
    position_noise: dict[str, float]
    velocity_noise: dict[str, float]
    homing_speed: float = Field(gt=0, description="max speed of the move to home (unit/s)")
    settle_s: float = Field(ge=0, description="how long the robot must stay settled (s)")
    settle_position_tolerance: float = Field(gt=0, description="settled: |position error| below")
    settle_velocity_tolerance: float = Field(gt=0, description="settled: |velocity| below")
    max_settle_s: float = Field(gt=0, allow_inf_nan=False, description="settling time limit (s)")
    homing_gains: HomingGains | None = None
    rest: dict[str, float] | None = None

    @model_validator(mode="after")
    def _settle_time(self) -> ResetConfig:
        if not self.max_settle_s > self.settle_s:
            raise ValueError(
                f"max_settle_s ({self.max_settle_s}) must be > settle_s ({self.settle_s}), "
                "else no reset can settle"
            )
        return self


class RobotConfig(StrictModel):
    """A whole robot: data, not code."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    control_rate_hz: float = Field(gt=0, le=2000)
    joints: list[JointConfig] = Field(min_length=1)
    actuation: ActuationConfig
    serial: SerialConfig
    device: DeviceConfig
    safety: SafetyConfig
    reset: ResetConfig
    workspace: WorkspaceConfig | None = None
    models: dict[ModelName, str] = Field(
        description="fidelity name -> MuJoCo XML (relative to sim/models/, or absolute); "
        "twin is required"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RobotConfig:
        names = [j.name for j in self.joints]
        if len(set(names)) != len(names):
            raise ValueError(f"joint names must be unique, got {names}")
        for section in ("home", "position_noise", "velocity_noise"):
            given = getattr(self.reset, section)
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise ValueError(f"reset.{section} names unknown joints {unknown}; joints: {names}")
        for name, value in (self.reset.rest or {}).items():
            joint = next((j for j in self.joints if j.name == name and j.actuated), None)
            if joint is None:
                raise ValueError(f"reset.rest.{name}: not an actuated joint; actuated joints: "
                                 f"{[j.name for j in self.joints if j.actuated]}")
            soft = joint.soft_limits
            if soft is not None and not soft.lower <= value <= soft.upper:
                raise ValueError(f"reset.rest.{name} = {value} is outside its soft limits "
                                 f"[{soft.lower}, {soft.upper}]; the robot is moved there "
                                 "under torque")
        if TWIN not in self.models:
            raise ValueError(
                f"models must name a '{TWIN}' model (the device emulator runs it); "
                f"named: {list(self.models)}"
            )
        for name in RESERVED_FIDELITIES:
            if name in self.models:
                raise ValueError(
                    f"models.{name}: '{name}' is reserved for the physical (or emulated) "
                    "device; give this model another name"
                )
        for name, file in self.models.items():
            if not resolve_model_file(file).is_file():
                raise ValueError(
                    f"models.{name}: file '{file}' not found (a path relative to "
                    f"{MODELS_DIR}, or an absolute path)"
                )
        if not any(j.actuated for j in self.joints):
            raise ValueError("at least one joint must be actuated")
        effort = self.actuation.type != "position"
        for key, value in (
            ("safety.brake_decel", self.safety.brake_decel),
            ("reset.homing_gains", self.reset.homing_gains),
        ):
            if effort and value is None:
                raise ValueError(f"actuation type '{self.actuation.type}' needs {key}")
            if not effort and value is not None:
                raise ValueError(f"{key} applies to voltage/torque actuation only; remove it")
        return self

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def actuated_joints(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints if j.actuated)

    @property
    def control_dt(self) -> float:
        return 1.0 / self.control_rate_hz

    def joint(self, name: str) -> JointConfig:
        for j in self.joints:
            if j.name == name:
                return j
        raise KeyError(f"robot '{self.name}' has no joint '{name}'; joints: {self.joint_names}")

    @property
    def model_names(self) -> tuple[str, ...]:
        """The fidelities this robot has a model for, in config order (`twin` among them)."""
        return tuple(self.models)

    def model_path(self, fidelity: str) -> Path:
        """The MuJoCo XML of the model named `fidelity`."""
        if fidelity not in self.models:
            raise ValueError(unknown_model_message(self, fidelity))
        return resolve_model_file(self.models[fidelity])


def resolve_model_file(file: str) -> Path:
    """A `models:` entry as a path: absolute as given (`~` expanded), else under sim/models/."""
    path = Path(file).expanduser()
    return path if path.is_absolute() else MODELS_DIR / path


def unknown_model_message(robot: RobotConfig, fidelity: str) -> str:
    """Why `fidelity` is not a model of `robot`, with the names it has and how to add one."""
    return (
        f"robot '{robot.name}' has no model '{fidelity}'; its models: "
        f"{', '.join(robot.model_names)} (add one under models: in its robot config, "
        f"e.g. configs/robots/{robot.name}.yaml)"
    )


M = TypeVar("M", bound=BaseModel)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: `source: key.path: what is wrong (expected ...)`."""
    lines = [f"{source}: {err.error_count()} problem(s) in config"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (remove it or check its spelling)"
        elif e["type"] == "missing":
            msg = "missing required key"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        got = e.get("input")
        quiet = e["type"] in ("missing", "extra_forbidden") or isinstance(got, (dict, list))
        got_s = "" if quiet else f" (got {got!r})"
        lines.append(f"  {path}: {msg}{got_s}")
    return "\n".join(lines)


def validate_mapping(data: Any, model: type[M], source: str) -> M:
    """Validate a parsed YAML mapping against `model`, raising `ConfigError` on any problem."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: top level must be a mapping of keys, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning I/O and syntax errors into `ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def load_robot_config(path_or_name: str | Path) -> RobotConfig:
    """Load `configs/robots/NAME.yaml` by name ("furuta") or by path."""
    path = Path(path_or_name)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        path = ROBOTS_DIR / f"{path_or_name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in ROBOTS_DIR.glob("*.yaml"))
            raise ConfigError(f"unknown robot '{path_or_name}'; known robots: {known}")
    return validate_mapping(read_yaml(path), RobotConfig, str(path))

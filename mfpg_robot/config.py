"""Training runs as data: the typed, validated schema of `configs/train/*.yaml`.

A train config names the algorithm and its hyper-parameters (`algo`), the high-fidelity env
the policy is trained on (`hf`), the low-fidelity side used by the multi-fidelity algorithms
(`lf`, `mf`) and where the run writes its folder (`run`). Defaults follow CleanRL's
`ppo_continuous_action.py`.

Loading fails early and precisely (the same rules as robot configs): an unknown key, a wrong
type, a missing field or an out-of-range value raises `ConfigError` naming the file, the key
path and what is expected. Command-line overrides (`--set algo.lr=1e-4`) are applied to the
parsed mapping before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator

from sim.robot_config import (
    RESERVED_FIDELITIES,
    ConfigError,
    ModelName,
    RobotConfig,
    StrictModel,
    load_robot_config,
    parse_yaml,
    read_yaml,
    unknown_model_message,
    validate_mapping,
)

ALGO_NAMES = ("ppo", "mfppo", "reinforce", "mfreinforce")
ACCEL_NAMES = ("none", "optimistic", "extragradient", "nesterov", "meta")
#: Top-level keys that mark a mapping as a train config (robot configs have none of them).
TRAIN_CONFIG_KEYS = frozenset({"seed", "algo", "hf", "lf", "mf", "run", "init"})

class AlgoConfig(StrictModel):
    """The algorithm and its hyper-parameters (CleanRL ppo_continuous_action defaults)."""

    name: Literal["ppo", "mfppo", "reinforce", "mfreinforce"] = Field(
        description="ppo | reinforce (HF only) | mfppo | mfreinforce (HF + LF control variate)"
    )
    accel: Literal["none", "optimistic", "extragradient", "nesterov", "meta"] = Field(
        default="none", description="update rule around Adam (mfpg_robot.accel)"
    )
    lr: float = Field(default=3.0e-4, gt=0, le=1.0, description="Adam learning rate")
    accel_options: dict[str, float | bool | None] = Field(
        default_factory=dict, description="options of the accel rule, e.g. {optimism: 0.5}"
    )
    gamma: float = Field(default=0.99, gt=0, le=1.0, description="discount factor")
    gae_lambda: float = Field(
        default=0.95, ge=0, le=1.0, description="GAE lambda (REINFORCE uses 1: Monte-Carlo)"
    )
    clip_coef: float = Field(default=0.2, gt=0, le=1.0, description="PPO ratio clip epsilon")
    ent_coef: float = Field(default=0.0, ge=0, description="entropy bonus coefficient")
    vf_coef: float = Field(default=0.5, ge=0, description="value-loss coefficient")
    max_grad_norm: float = Field(default=0.5, gt=0, description="global gradient-norm clip")
    update_epochs: int = Field(
        default=10, ge=1, le=1000, description="passes over each batch (REINFORCE: steps)"
    )
    num_minibatches: int = Field(default=32, ge=1, description="minibatches per epoch (PPO)")
    anneal_lr: bool = Field(default=True, description="linear lr decay to 0 over the run")
    norm_adv: bool = Field(default=True, description="normalise advantages per minibatch")
    clip_vloss: bool = Field(default=True, description="clip the value loss like the ratio")
    target_kl: float | None = Field(
        default=None, gt=0, description="stop an update's epochs once approx KL exceeds this"
    )
    norm_reward: bool = Field(
        default=True,
        description="scale rewards by the running std of the discounted return "
        "(CleanRL's NormalizeReward); logged returns are always raw",
    )
    reward_clip: float = Field(default=10.0, gt=0, description="clip of scaled rewards")
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [64, 64], min_length=1, description="tanh MLP hidden sizes"
    )
    log_std_init: float = Field(default=0.0, ge=-5.0, le=2.0, description="initial log-std")

    @field_validator("accel_options")
    @classmethod
    def _accel_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if value and "accel" in info.data:  # build the rule once on a dummy parameter
            import torch

            from mfpg_robot.accel import make_accelerator

            p = torch.nn.Parameter(torch.zeros(1))
            sgd = torch.optim.SGD([p], lr=info.data.get("lr", 1e-3))
            make_accelerator(info.data["accel"], [p], sgd, **value)
        return value


class HFConfig(StrictModel):
    """The high-fidelity env: the robot, or its stand-in for dry runs and benchmarks."""

    env: str = Field(description="Gymnasium id, e.g. mfpg/FurutaSwingup-v0 or Hopper-v5")
    fidelity: ModelName | None = Field(
        default="twin",
        description="model of an mfpg env, a name under models: in its robot config (twin, "
        "reduced, ...); robot = the physical or emulated device; null for plain Gymnasium "
        "envs that take no fidelity",
    )
    steps_per_iter: int = Field(default=2048, ge=1, description="HF steps per iteration")
    total_steps: int = Field(ge=1, description="HF step budget of the run")
    robot: str | None = Field(
        default=None,
        description="fidelity robot: configs/robots/NAME.yaml or a robot name; null = the "
        "robot of hf.env's task (mfpg/FurutaSwingup-v0: furuta, mfpg/Arm2Reach-v0: arm2)",
    )
    port: str | None = Field(
        default=None,
        description="fidelity robot: serial port (--port wins); null = serial.port of the "
        "robot config",
    )
    exploring_starts: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="simulated mfpg fidelities only: share of episodes started from a state "
        "spread over the joints' ranges (sim.starts.sample_exploring_start), e.g. to train on "
        "the LF model before a robot session; 0 = the robot's reset distribution only",
    )
    goal_starts: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="simulated mfpg fidelities only: share of episodes started near the "
        "task's goal (Task.sample_goal_start; furuta: the pendulum near upright); "
        "exploring_starts + goal_starts <= 1",
    )

    @field_validator("total_steps")
    @classmethod
    def _at_least_one_iteration(cls, value: int, info: ValidationInfo) -> int:
        per_iter = info.data.get("steps_per_iter")
        if per_iter is not None and value < per_iter:
            raise ValueError(f"must be >= hf.steps_per_iter ({per_iter}): one iteration at least")
        return value


class LFConfig(StrictModel):
    """The low-fidelity side of the multi-fidelity algorithms (ignored by ppo/reinforce)."""

    env: str | None = Field(default=None, description="Gymnasium id; null = same as hf.env")
    fidelity: ModelName = Field(
        default="reduced",
        description="LF model of the same task, a name under models: in its robot config "
        "(ignored when lf.env is a plain Gymnasium env: its model is the env itself)",
    )
    pairing: Literal["episode", "synced"] = Field(
        default="synced",
        description="episode: LF reset to each HF episode start, same noise; synced: k-step "
        "LF segments from every HF state with the same noise",
    )
    k: int = Field(default=10, ge=1, le=10_000, description="synced: LF segment length")
    M: int = Field(
        default=16, ge=2, le=10_000, description="synced: fresh-noise LF segments per HF state"
    )
    lf_pool_per_hf: int = Field(
        default=90, ge=1, description="LF reference steps per HF step (episode pairing's pool)"
    )
    same_starts: bool = Field(
        default=False,
        description="episode: reference episodes start from each paired episode's own start "
        "(unbiased for any start distribution, e.g. a real robot's reset) instead of a pool "
        "drawn from the simulator's start distribution",
    )
    nthread: int = Field(default=2, ge=1, le=256, description="threads of the batched LF stepper")
    batch: int = Field(
        default=8192, ge=1, le=65536,
        description="most LF copies stepped together; the LF rollouts run in chunks of at most "
        "this many (synced: at least M + 1), the unit lf.workers share; samples depend on it "
        "at float rounding, never on lf.backend or lf.workers",
    )
    backend: Literal["local", "ray"] = Field(
        default="local",
        description="local: the chunks one after another in the learner's process; ray: spread "
        "over lf.workers Ray actors (needs mfpg-robot[ray]; the cluster at RAY_ADDRESS, else "
        "one running on this machine, else a new local one); the same samples either way",
    )
    workers: int = Field(
        default=2, ge=1, le=1024,
        description="lf.backend ray: Ray actors, each with its own LF collector and "
        "lf.nthread CPUs",
    )

    @field_validator("backend")
    @classmethod
    def _ray_installed(cls, value: str) -> str:
        if value == "ray":
            from mfpg_robot.lf_ray import require_ray

            require_ray("the ray backend")
        return value


class MFConfig(StrictModel):
    """The control-variate estimator."""

    c_ema: float = Field(
        default=0.95, ge=0, lt=1.0, description="EMA smoothing of the control coefficient c"
    )
    min_pairs: int = Field(
        default=20, ge=2, description="fewer HF/LF pairs than this: c = 0 (plain HF gradient)"
    )
    c_from: Literal["surrogate", "gradient"] = Field(
        default="surrogate",
        description="the moments c is estimated from: 'surrogate', the per-sample values of "
        "A log pi (the MFPG paper's rule); 'gradient', per-sample policy-gradient projections "
        "on random directions, reference pool included (the moments of what the update "
        "averages)",
    )


class RunConfig(StrictModel):
    """Where and how often the run writes."""

    dir: str | None = Field(
        default=None, description="run folder; null = ./runs/<algo>-<env>-s<seed>-<time>"
    )
    checkpoint_every: int = Field(
        default=10, ge=0, description="iterations between checkpoints (0 = final only)"
    )
    log_every: int = Field(
        default=10, ge=1, description="iterations between summary lines under the progress bar"
    )
    progress: bool = Field(default=True, description="show a progress bar")
    export: bool | None = Field(
        default=None,
        description="a finished run of a robot task writes its policy as <run>/policy.onnx; "
        "null = sessions on the robot or emulator (hf.fidelity: robot) do, simulated runs not",
    )
    torch_threads: int = Field(
        default=1, ge=1, le=256,
        description="torch intra-op threads; small MLPs run fastest on 1 (more contend)",
    )


def env_takes_fidelity(env_id: str) -> bool | None:
    """Whether a registered env's constructor takes `fidelity` (the mfpg envs do, plain
    Gymnasium envs do not); None when the id or its entry point cannot be resolved here."""
    import inspect

    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    from sim.gym_collector import env_spec

    try:
        entry = env_spec(env_id).entry_point
        creator = entry if callable(entry) else load_env_creator(entry)
        return "fidelity" in inspect.signature(creator).parameters
    except (gym.error.Error, ImportError, AttributeError, ValueError, TypeError):
        return None


def env_robot(env_id: str) -> RobotConfig | None:
    """The robot config of an mfpg/* env id's task; None for any other env."""
    import sim

    entry = sim.ENV_IDS.get(env_id)
    return None if entry is None else load_robot_config(entry[1].robot)


class InitConfig(StrictModel):
    """Warm start: networks from a checkpoint trained elsewhere (e.g. on the LF model only)."""

    checkpoint: str | None = Field(
        default=None,
        description="checkpoint (.pt) or run folder to start from; null = fresh networks",
    )
    critic: bool = Field(
        default=True,
        description="also load the critic and the reward scaler it was trained with (the "
        "value targets' units); false: a fresh critic with the loaded policy",
    )
    log_std: float | None = Field(
        default=None, ge=-5.0, le=2.0,
        description="set the loaded policy's log-std (the exploration noise of the session, "
        "e.g. -1.5 for a std of 0.22 around a good LF policy); null = keep the checkpoint's",
    )


class TrainConfig(StrictModel):
    """A whole training run."""

    seed: int = Field(ge=0, description="seeds torch, the action noise and env resets")
    algo: AlgoConfig
    hf: HFConfig
    lf: LFConfig = Field(default_factory=LFConfig)
    mf: MFConfig = Field(default_factory=MFConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    init: InitConfig = Field(default_factory=InitConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        ppo_like = self.algo.name in ("ppo", "mfppo")
        if ppo_like and self.hf.steps_per_iter < self.algo.num_minibatches:
            raise ValueError(
                f"hf.steps_per_iter ({self.hf.steps_per_iter}) must be >= "
                f"algo.num_minibatches ({self.algo.num_minibatches})"
            )
        if self.hf.fidelity != "robot":
            for key in ("robot", "port"):
                if getattr(self.hf, key) is not None:
                    raise ValueError(
                        f"hf.{key} is set but hf.fidelity is '{self.hf.fidelity}': it names "
                        f"the device of hf.fidelity: robot; remove it or set hf.fidelity: robot"
                    )
        for key in ("exploring_starts", "goal_starts"):
            share = getattr(self.hf, key)
            if share > 0 and (
                self.hf.fidelity in (None, "robot") or not self.hf.env.startswith("mfpg/")
            ):
                raise ValueError(
                    f"hf.{key} ({share}) applies to simulated mfpg envs only, not to hf.env "
                    f"'{self.hf.env}' with hf.fidelity '{self.hf.fidelity}' (a robot always "
                    f"starts from its reset procedure); set it to 0"
                )
        if self.hf.exploring_starts + self.hf.goal_starts > 1.0:
            raise ValueError(
                f"hf.exploring_starts ({self.hf.exploring_starts}) + hf.goal_starts "
                f"({self.hf.goal_starts}) is more than 1: they are shares of the episodes"
            )
        return self

    @model_validator(mode="after")
    def _fidelities_are_models(self) -> TrainConfig:
        checks = [("hf", self.hf.env, self.hf.fidelity)]
        if self.algo.name in ("mfppo", "mfreinforce"):
            checks.append(("lf", self.lf.env or self.hf.env, self.lf.fidelity))
        for key, env, fidelity in checks:
            if fidelity is None or (key == "hf" and fidelity in RESERVED_FIDELITIES):
                continue
            robot = env_robot(env)
            if robot is not None and fidelity not in robot.models:
                raise ValueError(f"{key}.fidelity: {unknown_model_message(robot, fidelity)}")
        return self

    @model_validator(mode="after")
    def _mf_needs_lf_model(self) -> TrainConfig:
        """MF on plain Gymnasium envs: both fidelities MuJoCo envs of one joint layout."""
        if self.algo.name not in ("mfppo", "mfreinforce"):
            return self
        lf_env = self.lf.env or self.hf.env
        plain = [env_takes_fidelity(env) is False for env in (self.hf.env, lf_env)]
        if not any(plain):
            return self
        name = self.algo.name
        if not all(plain):
            keys = [("hf.env", self.hf.env), ("lf.env", lf_env)]
            (key, env), (other_key, other) = keys if plain[0] else keys[::-1]
            raise ValueError(
                f"{key}: '{env}' is a plain Gymnasium env (it takes no fidelity) but {other_key} "
                f"'{other}' is an mfpg env; {name} resets the LF env to the HF states joint by "
                f"joint, so both must be mfpg envs of one task (e.g. mfpg/FurutaSwingup-v0 with "
                f"lf.fidelity: reduced) or both plain Gymnasium MuJoCo envs of one model layout "
                f"(e.g. hf.env: a modified InvertedPendulum, lf.env: InvertedPendulum-v5); "
                f"train a single plain env with algo.name: ppo or reinforce"
            )
        from sim.gym_collector import mujoco_layout

        layouts = []
        for key, env in (("hf.env", self.hf.env), ("lf.env", lf_env)):
            try:
                layouts.append(mujoco_layout(env))
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"{key}: {err}; algo.name '{name}' on plain Gymnasium envs needs MuJoCo "
                    f"envs (gymnasium MujocoEnv) with hinge and slide joints for both "
                    f"fidelities; train other envs with algo.name: ppo or reinforce"
                ) from None
        if layouts[0] != layouts[1]:
            (hq, hv, hn), (lq, lv, ln) = layouts
            raise ValueError(
                f"lf.env '{lf_env}' has joints {list(ln)} (nq={lq}, nv={lv}) but hf.env "
                f"'{self.hf.env}' has {list(hn)} (nq={hq}, nv={hv}); {name} resets the LF env "
                f"to the HF states, so lf.env must be a model of the same joints"
            )
        if self.lf.backend == "ray":
            raise ValueError(
                f"lf.backend: ray runs mfpg envs only, and lf.env '{lf_env}' is a plain "
                f"Gymnasium env; set lf.backend: local"
            )
        return self

    @property
    def num_iterations(self) -> int:
        return self.hf.total_steps // self.hf.steps_per_iter

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML/JSON-ready) form of the resolved config."""
        return self.model_dump(mode="json")


def parse_value(text: str) -> Any:
    """An override value as YAML would read it (`1e-4` is a float, `null` is None)."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override value {text!r} is not valid YAML: {err}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b=c` override set (values parsed as YAML).

    Intermediate mappings are created as needed; the result is validated by the caller,
    so a misspelt key is reported as unknown there.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(p.strip() for p in path):
            raise ConfigError(
                f"bad override {item!r}: expected KEY.PATH=VALUE, e.g. algo.lr=1e-4"
            )
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(
                    f"bad override {item!r}: {where} is a value ({child!r}), not a section"
                )
            node = child
        node[path[-1]] = parse_value(value)
    return out


def is_train_mapping(data: Any) -> bool:
    """True if a parsed YAML mapping looks like a train config (by its top-level keys)."""
    return isinstance(data, dict) and bool(TRAIN_CONFIG_KEYS & set(data))


def validate_train_config(data: Any, source: str) -> TrainConfig:
    """Validate a parsed mapping as a `TrainConfig`; `source` names it in errors."""
    return validate_mapping(data, TrainConfig, source)


def load_train_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Load `configs/train/NAME.yaml` (a path) with optional `a.b=c` overrides."""
    data = read_yaml(path)
    source = str(path)
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping of keys")
        try:
            data = apply_overrides(data, overrides)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        source += " (with --set " + " ".join(overrides) + ")"
    return validate_train_config(data, source)


def dump_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML (what a run folder stores as config.yaml)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

"""The simulated fidelities: MuJoCo models, task definitions and Gymnasium envs.

Importing `sim` registers the envs:

    import gymnasium as gym, sim
    env = gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced")
"""

from gymnasium.envs.registration import register, registry

from sim.tasks.arm2 import Arm2Reach
from sim.tasks.furuta import FurutaSwingup

#: Gymnasium id -> (entry point, task class); the task's horizon is the id's TimeLimit.
ENV_IDS = {
    "mfpg/FurutaSwingup-v0": ("sim.envs.furuta:FurutaSwingupEnv", FurutaSwingup),
    "mfpg/Arm2Reach-v0": ("sim.envs.arm2:Arm2ReachEnv", Arm2Reach),
}

for _env_id, (_entry_point, _task) in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, max_episode_steps=_task.max_episode_steps)

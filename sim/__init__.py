"""The simulated fidelities: MuJoCo models, task definitions and Gymnasium envs.

Importing `sim` registers the envs:

    import gymnasium as gym, sim
    env = gym.make("mfpg/FurutaSwingup-v0", fidelity="reduced")
"""

from gymnasium.envs.registration import register, registry

ENV_IDS = {
    "mfpg/FurutaSwingup-v0": ("sim.envs.furuta:FurutaSwingupEnv", 1000),
    "mfpg/Arm2Reach-v0": ("sim.envs.arm2:Arm2ReachEnv", 200),
}

for _env_id, (_entry_point, _max_steps) in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, max_episode_steps=_max_steps)

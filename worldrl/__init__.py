"""worldrl: world models (RSSM, S4-family, Mamba), heads, replay, imagination and behaviour.

Depends on ``kernels``, never on ``agents`` or ``envs`` (dependency direction:
kernels <- worldrl <- agents).
"""

__version__ = "0.1.0"

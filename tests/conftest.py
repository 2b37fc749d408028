import os

# rendering for DMC pixels on machines without a display
os.environ.setdefault("MUJOCO_GL", "egl")

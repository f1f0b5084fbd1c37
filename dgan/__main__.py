from dgan.stop_signals import die_with_parent_from_env

die_with_parent_from_env()  # a child of `dgan run`: ends with it, even if it is SIGKILLed

from dgan.cli import app  # noqa: E402  (after: a child whose parent is gone stops before the imports)

app()

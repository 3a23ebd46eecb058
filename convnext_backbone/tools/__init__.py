"""The library behind the command-line tools in ``tools/`` (config loading, adapting a GPU recipe to the machine,
runner setup, dummy inputs). It imports mmdet / mmseg / timm only where a tool needs them, and says which extra
installs a missing one."""

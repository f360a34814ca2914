"""`macp envoy-render [--check]`: write (or verify) the committed Envoy configs in `envoy/`.

`envoy/envoy.compose.yaml` is what compose mounts into the Envoy container. `envoy/envoy.native.yaml`
is a readable reference only: the native launcher renders its own copy into the data dir at
start-up with the ports it actually uses. Both are rendered with an empty environment, so the
committed bytes never depend on who ran the command.
"""

from __future__ import annotations

from pathlib import Path

from services.runtime.settings import Env
from services.stack.envoy_config import TARGETS, render_yaml
from services.stack.rendered_tree import RenderedTree

FIX_COMMAND = "macp envoy-render"


def rendered_files() -> dict[str, str]:
    """File name in `envoy/` -> its exact expected contents."""
    return {f"envoy.{target}.yaml": render_yaml(target, Env({})) for target in TARGETS}


TREE = RenderedTree("the Envoy configs", Path("envoy"), rendered_files, FIX_COMMAND)
stale_files = TREE.stale_files
configure = TREE.configure
run = TREE.run

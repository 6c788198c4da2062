"""rollout.name=qstar resolves in a fresh process both ways verl loads plugins: the `verl.plugins`
entry point qstar installs, and VERL_USE_EXTERNAL_MODULES (entry points switched off there, so only
the variable can have registered it). Each process imports verl: ~10-30 s on 2 cores."""
import os
import subprocess
import sys

import pytest

CODE = ("import verl\nfrom verl.workers.rollout.replica import get_rollout_replica_class\n"
        "from verl.workers.rollout.base import get_rollout_class\n"
        "try:\n    r = get_rollout_replica_class('qstar').__name__\n    a = get_rollout_class('qstar').__name__\n"
        "except (ValueError, AssertionError):\n    r = a = None\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry\n"
        "print('FOUND', r, a, 'qstar_agent' in _agent_loop_registry)\n")


@pytest.mark.parametrize("way", ["entry_point", "env"])
def test_registration_in_a_fresh_process(way, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    if way != "entry_point":
        env["VERL_USE_EXTERNAL_PLUGINS"] = "none"  # entry points off: only the variable can register
    if way == "env":
        env["VERL_USE_EXTERNAL_MODULES"] = "engine.integrations.verl"
    p = subprocess.run([sys.executable, "-c", CODE], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-2000:]
    assert last == "FOUND QStarReplica QStarRolloutAdapter True", last

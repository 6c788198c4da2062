"""verl agent loop "qstar_agent": verl's single-turn loop plus pi_t's own view of the prompt.

verl's server interface carries only the policy's prompt ids; the sample's other fields (e.g.
the reference solution a dataset keeps in `reward_model` or `extra_info`) live in the agent
loop. This loop renders engine_kwargs.qstar.teacher_template over them (settings.teacher_messages:
the last user turn replaced, `{prompt}` = that turn's text), tokenises it the way verl tokenises
the policy's prompt (but not capped at rollout.prompt_length: that cap shapes the DataProto, which
pi_t's prompt never enters), and passes the ids as `qstar_prompt_ids_t` to the server. Without a template
it is verl's single_turn_agent (pi_t sees the policy's prompt).
Select it with `actor_rollout_ref.rollout.agent.default_agent_loop=qstar_agent`.
Not for: sampling (server.py); multi-turn tool loops (their custom keys are not carried).
"""
from __future__ import annotations

from verl.experimental.agent_loop.agent_loop import register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from .settings import QStarRolloutSettings, teacher_messages

AGENT_NAME = "qstar_agent"


class _WithTeacherPrompt:
    """The loop's server client, adding pi_t's prompt ids to each generate call."""

    def __init__(self, client, ids_t: list[int]):
        self._client, self._ids_t = client, ids_t

    async def generate(self, request_id, **kwargs):
        return await self._client.generate(request_id, qstar_prompt_ids_t=self._ids_t, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


@register(AGENT_NAME)
class QStarAgentLoop(SingleTurnAgentLoop):
    async def run(self, sampling_params, **kwargs):
        template = QStarRolloutSettings.from_config(self.rollout_config.get("engine_kwargs")).teacher_template
        if template:
            fields = {k: v for k, v in kwargs.items() if k != "raw_prompt"}
            messages_t = teacher_messages(template, [dict(m) for m in kwargs["raw_prompt"]], fields)
            # verl's tokenisation of a prompt, without its cap at rollout.prompt_length: pi_t's
            # prompt never enters the DataProto, and a reference solution makes it longer
            builder = self.continuous_token_builder
            ids_t = await self.loop.run_in_executor(None, lambda: builder.build_initial_tokens(messages_t))
            self.server_manager = _WithTeacherPrompt(self.server_manager, ids_t)
        return await super().run(sampling_params, **kwargs)

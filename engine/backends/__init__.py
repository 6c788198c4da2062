"""Model backends other than the built-in hf engine (engine.core): today only `vllm`.

Each backend takes the same requests and returns the same engine.outputs.SampleOutput objects
as the hf engine, so the pipeline and the Python API do not care which one ran.
Not for: the hf engine itself (engine.core, engine.slot_model) or the math (qstar_kernels).
"""

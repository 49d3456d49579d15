"""The regional SDXL renderer: Omost's masked cross-attention ("omost") or ComfyUI-style blending ("area").

``Renderer`` (``renderer.py``) implements ``Engine.render``; the parts are usable on their own:
``loading`` (hub id, diffusers folder or single file), ``prompt_encoding`` (greedy 77-token bags),
``attention`` (the fused regional processor), ``area``, ``sampler`` (DPM++ 2M Karras) and ``pipeline``.
Importing this package loads no model.
"""

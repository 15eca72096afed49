"""OmegaConf resolvers of the config, registered when :mod:`alchemist_pl` is imported.

``${alchemist.if:cond,a,b}``: ``a`` if ``cond`` else ``b``; ``${alchemist.floordiv:a,b}``: ``a // b``
(integers). ``data.image_channels``, ``data.image_size`` and the samplers' ``clip_sample`` follow
``data.latents`` through them (conf/data/emoji.yaml).
"""

from __future__ import annotations

from omegaconf import OmegaConf


def _if(condition, then, otherwise):
    return then if condition else otherwise


def _floordiv(a, b) -> int:
    return int(a) // int(b)


def register_resolvers() -> None:
    """Register the resolvers above (again: replaced, so re-imports are harmless)."""
    OmegaConf.register_new_resolver("alchemist.if", _if, replace=True)
    OmegaConf.register_new_resolver("alchemist.floordiv", _floordiv, replace=True)

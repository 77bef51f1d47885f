"""Choosing an op's backend: the one way `query_field` and the StyleGAN2 helpers pick theirs."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def choose_backend(requested: str, order: Sequence[str], unavailable_reason: Callable[[str, bool], str | None],
                   source: str = "backend") -> tuple[str, dict[str, str]]:
    """The backend to run, and why each one tried before it was skipped.

    requested: 'auto' (the first of `order` that applies) or a name of `order` (which must
    apply). unavailable_reason(name, explicit) says why backend `name` cannot run the inputs,
    or None; explicit is True for a backend asked for by name. source: what named the request,
    for the errors ('backend', or an environment variable). ValueError naming `source` for an
    unknown name, a named backend that cannot run, or no backend that can.
    """
    if requested != "auto":
        if requested not in order:
            raise ValueError(f"{source} must be 'auto' or one of {tuple(order)}, got {requested!r}")
        reason = unavailable_reason(requested, True)
        if reason is not None:
            raise ValueError(f"{source}={requested!r} cannot run these inputs: {reason}")
        return requested, {}
    skipped = {}
    for name in order:
        reason = unavailable_reason(name, False)
        if reason is None:
            return name, skipped
        skipped[name] = reason
    raise ValueError(f"no backend of {tuple(order)} can run these inputs: {skipped}")

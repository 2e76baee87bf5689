"""Protection domains: the scope in which a QP may use an MR."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._base import VerbsObject

if TYPE_CHECKING:
    from .context import Context

__all__ = ["PD"]


class PD(VerbsObject):
    """``ibv_alloc_pd``: groups MRs and QPs; a QP reaches only its own PD's MRs.

    The engine knows a PD only by ``handle``: its memory table checks every lkey and rkey
    against the QP's PD.
    """

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.ctx = ctx
        self.handle = ctx._new_handle(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._children)} MRs and QPs"
        return f"<PD of {self.ctx.name} ({state})>"

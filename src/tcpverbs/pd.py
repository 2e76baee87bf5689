"""Protection domains: the scope in which a QP may use an MR."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._base import VerbsObject

if TYPE_CHECKING:
    from .context import Context
    from .mr import MR

__all__ = ["PD"]


class PD(VerbsObject):
    """``ibv_alloc_pd``: groups MRs and QPs; a QP reaches only its own PD's MRs."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.ctx = ctx
        self._mrs_by_lkey: dict[int, MR] = {}

    def _release(self) -> None:
        self._mrs_by_lkey.clear()

    def _mr_for_lkey(self, lkey: int) -> MR | None:
        return self._mrs_by_lkey.get(lkey)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._mrs_by_lkey)} MRs"
        return f"<PD of {self.ctx.name.decode()} ({state})>"

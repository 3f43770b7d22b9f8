"""Admin API for held requests: list what ``hold`` faults parked, and release each one.

``GET /api/v1/held`` lists them; ``POST /api/v1/held/{id}/release`` with ``{"as": "approve" |
"decline" | "drop", "code": "05"}`` releases one (``switch.held`` says what each outcome does) and
answers once the release is carried out: for an approval, after the posting is committed and the
reply written, with the code the host answered. 404: no such id (released already, or never held);
409: its connection closed (the request was dropped then; nothing is posted or sent now), or a
release is already under way; 422: a bad body.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from switch.faults import DEFAULT_HOLD_CODE, HoldOutcome
from switch.held import AlreadyReleasing, Release, ReleaseStatus

if TYPE_CHECKING:
    from switch.admin import SwitchRuntime

log = logging.getLogger("switch.admin")


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    outcome: HoldOutcome = Field(alias="as", description="approve: the host decides as usual, committed before "
                                 "the reply; decline: answered `code` unprocessed, nothing posted; drop: no reply.")
    code: str | None = Field(default=None, pattern=r"^[0-9A-Za-z]{2}$",
                             description=f"Response code of a decline (default {DEFAULT_HOLD_CODE}).")


def add_held_routes(app: FastAPI, runtime: SwitchRuntime, prefix: str = "/api/v1") -> None:
    """Register ``/held`` and ``/held/{id}/release`` on the admin app."""

    def unknown(held_id: str) -> HTTPException:
        return HTTPException(status_code=404, detail=f"no held request with id {held_id!r} (released already, "
                                                     "or never held)")

    @app.get(f"{prefix}/held", tags=["held"])
    async def list_held() -> dict[str, Any]:
        """Requests parked by ``hold`` faults, oldest first; then those dropped when their connection closed."""
        held = runtime.held
        if held is None:
            return {"count": 0, "limit": 0, "refused": 0, "held": []}
        now = trio.current_time()
        return {"count": len(held), "limit": held.limit, "refused": held.refused,
                "held": [entry.as_dict(now) for entry in held.entries()]}

    @app.post(f"{prefix}/held/{{held_id}}/release", tags=["held"],
              responses={404: {"description": "No such held request"},
                         409: {"description": "Its connection closed, or a release is under way"}})
    async def release_held(held_id: str, body: ReleaseRequest) -> dict[str, Any]:
        """Release a held request as approve, decline or drop; answers when that is done."""
        if body.code is not None and body.outcome is not HoldOutcome.DECLINE:
            raise HTTPException(status_code=422, detail=[{"loc": ["body", "code"], "type": "value_error",
                                                          "msg": 'applies to "as": "decline" only'}])
        held = runtime.held
        if held is None:
            raise unknown(held_id)
        command = Release(body.outcome, (body.code or DEFAULT_HOLD_CODE).upper(), by="admin")
        try:
            result = await held.release(held_id, command)
        except KeyError:
            raise unknown(held_id) from None
        except AlreadyReleasing:
            raise HTTPException(status_code=409, detail=f"held request {held_id!r} is being released already"
                                ) from None
        answer = result.as_dict()
        if result.status is ReleaseStatus.CONNECTION_GONE:
            log.info("admin: held request %s not released as %s: its connection is gone", held_id,
                     body.outcome.value)
            raise HTTPException(status_code=409, detail={"reason": "the connection is gone", **answer})
        log.info("admin: held request %s released as %s: %s", held_id, body.outcome.value, result.status.value)
        return answer

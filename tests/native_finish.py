"""The part of a unified Response that must survive any trip through the wire families."""

from __future__ import annotations

from axonsim.unified import Response


def without_native(resp: Response) -> Response:
    """`resp` without what only the family that set it writes back (finish_native, stop_sequence):
    a parser records its family's own finish value, which the unified model did not carry before."""
    return resp.model_copy(update={"finish_native": None, "stop_sequence": None})

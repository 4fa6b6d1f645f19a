"""The LitServe API of ``ctiir serve``: decode a query, search in batches, encode the answer.

A module of its own because LitServe pickles the API into its worker processes (so the class must be
importable by name) and because importing it needs the ``serve`` extra, which ``ctiir.retrieval`` does not.
No ``from __future__ import annotations`` here: LitServe reads ``decode_request``'s annotation at run time,
and only the real ``Request`` class makes it hand over the parsed JSON or form.
"""

from typing import Any
from urllib.parse import quote

import litserve as ls
from fastapi import HTTPException
from starlette.requests import Request

from ctiir.retrieval.errors import QueryError
from ctiir.retrieval.serve import decode_base64_image, parse_k


class SearchAPI(ls.LitAPI):
    """``POST /search``. Bad queries are rejected in ``decode_request`` (a 400 naming the problem), so a batch
    that reaches ``predict`` is made only of valid queries and one bad request never fails its neighbours."""

    def __init__(
        self,
        ckpt: str,
        index: str,
        *,
        backend: str = "exact",
        max_k: int = 100,
        max_batch_size: int = 8,
        device: str | None = None,
        ckpt_sha256: str | None = None,
    ) -> None:
        super().__init__(api_path="/search", max_batch_size=max_batch_size, batch_timeout=0.005)
        self.ckpt, self.index, self.backend, self.requested_max_k, self.device_override = ckpt, index, backend, max_k, device
        self.ckpt_sha256 = ckpt_sha256  # the checkpoint's sha256 if the caller already has it: not hashed again

    def setup(self, device: str) -> None:
        from ctiir.retrieval.retriever import Retriever

        self.retriever = Retriever.from_checkpoint(
            self.ckpt, self.index, device=self.device_override or device, backend=self.backend, ckpt_sha256=self.ckpt_sha256
        )
        self.max_k = min(self.requested_max_k, len(self.retriever.index))

    def decode_request(self, request: Request) -> dict[str, Any]:  # noqa: D102 - LitServe reads this annotation
        from ctiir.retrieval.retriever import open_image

        try:
            if hasattr(request, "getlist"):  # a multipart (or urlencoded) form
                upload = request.get("image")
                raw = None
                if upload is not None and hasattr(upload, "file"):
                    raw = upload.file.read() or None  # an empty file field: no image
                elif isinstance(upload, str) and upload:
                    raw = decode_base64_image(upload)
                text, k = request.get("text"), request.get("k")
            elif isinstance(request, dict):
                raw = decode_base64_image(request["image"]) if request.get("image") else None
                text, k = request.get("text"), request.get("k")
            else:
                raise QueryError("the body must be a JSON object or a multipart form")
            if text is not None and not isinstance(text, str):
                raise QueryError(f"text must be a string, got {type(text).__name__}")
            text = text.strip() if text else None
            if raw is None and not text:
                raise QueryError("give an image, a text, or both")
            image = open_image(raw, "uploaded image") if raw is not None else None
            return {"image": image, "text": text, "k": parse_k(k, self.max_k)}
        except QueryError as err:
            raise HTTPException(status_code=400, detail=str(err)) from err

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return inputs

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        k = max(q["k"] for q in batch)
        found = self.retriever.search_batch([q["image"] for q in batch], [q["text"] for q in batch], k=k)
        return [{**r.to_dict(), "k": q["k"]} for q, r in zip(batch, found, strict=True)]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        results = output["results"][: output["k"]]
        for item in results:
            item["image_url"] = "/images/" + quote(item["id"])
        return {"text": output["text"], "weights": output["weights"], "results": results}

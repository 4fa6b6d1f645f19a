"""``ctiir serve``: an index over HTTP, on LitServe.

- ``POST /search``: multipart (``image`` file, ``text``, ``k``) or JSON (``{"image": base64, "text", "k"}``);
  returns ``{"text", "weights", "results": [{"rank", "id", "score", "image_url"}]}``.
- ``GET /images/{id}``: a gallery image; ``GET /``: one HTML page to upload an image, type the change and
  see the results as a grid with scores.

Why LitServe plus one ASGI middleware: LitServe runs the model in worker processes and batches concurrent
queries into one ``search_batch`` (``max_batch_size``), which is what a search endpoint needs; but it owns
``GET /`` (a "litserve running" text) and answers a malformed JSON body with a 500. The middleware, given to
LitServe through its ``middlewares`` argument, serves the page and the gallery images (they need no model)
and turns malformed bodies and unsupported content types into 4xx answers with a message.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ctiir.cliargs import EXIT_OK, add_device, command_parser, run_command
from ctiir.retrieval.commands import device_option, fail_on_data, require_file
from ctiir.retrieval.errors import QueryError, RetrievalError

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

MAX_UPLOAD_MB = 10.0


def import_litserve() -> Any:
    try:
        import litserve
    except ImportError as err:
        raise RetrievalError("ctiir serve needs LitServe: pip install 'ctiir[serve]'") from err
    return litserve


def parse_k(value: Any, max_k: int) -> int:
    """``k`` from a form field or JSON value: an int from 1 to ``max_k``."""
    if value is None or value == "":
        return min(10, max_k)
    try:
        k = int(value)
        if isinstance(value, float) and value != k:
            raise ValueError(value)
    except (TypeError, ValueError) as err:
        raise QueryError(f"k must be an integer, got {value!r}") from err
    if not 1 <= k <= max_k:
        raise QueryError(f"k must be from 1 to {max_k}, got {k}")
    return k


def decode_base64_image(value: Any) -> bytes:
    if not isinstance(value, str):
        raise QueryError(f"image must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]  # a data URL
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise QueryError(f"image is not valid base64 ({err})") from err


class PagesMiddleware:
    """ASGI middleware: ``GET /`` (the page), ``GET /images/{id}`` (gallery files), and 4xx for bodies of
    ``POST /search`` that are too large, not JSON or multipart, or malformed JSON."""

    def __init__(self, app: Any, *, index: str, max_k: int, max_bytes: int) -> None:
        from ctiir.retrieval.storage import Sources, read_manifest

        self.app = app
        self.max_bytes = max_bytes
        manifest = read_manifest(index)
        raw = json.loads((Path(index) / "sources.json").read_text(encoding="utf-8"))
        ids = json.loads((Path(index) / "ids.json").read_text(encoding="utf-8"))
        sources = Sources(raw["root"], raw["paths"], raw["size"], raw["mtime_ns"])
        self.files = {gid: Path(sources.root) / rel for gid, rel in zip(ids, sources.paths, strict=True)}
        from ctiir.retrieval.page import PAGE as page
        about = f"{manifest['count']} images in {html.escape(str(index))}; model {html.escape(str(manifest['backbone'].get('name')))}"
        self.page = page.replace("__GALLERY__", about).replace("__MAX_K__", str(min(max_k, manifest["count"]))).encode("utf-8")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.responses import FileResponse, JSONResponse, Response

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/":
            await Response(self.page, media_type="text/html; charset=utf-8")(scope, receive, send)
            return
        if method == "GET" and path.startswith("/images/"):
            gallery_id = unquote(path[len("/images/"):])
            file = self.files.get(gallery_id)
            if file is None:
                response: Any = JSONResponse({"detail": f"no gallery image with id {gallery_id!r}"}, status_code=404)
            elif not file.is_file():
                response = JSONResponse({"detail": f"gallery image {gallery_id!r} is gone from {file}"}, status_code=404)
            else:
                response = FileResponse(file)
            await response(scope, receive, send)
            return
        if method == "POST" and path == "/search":
            await self._checked_search(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _checked_search(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        ctype = headers.get("content-type", "")
        limit = f"{self.max_bytes / 2**20:.1f} MB"

        async def reject(status: int, message: str) -> None:
            await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)

        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await reject(413, f"the request body is {int(declared) / 2**20:.1f} MB; the limit is {limit}")
            return
        if not ctype.startswith(("application/json", "multipart/form-data", "application/x-www-form-urlencoded")):
            await reject(415, f"send multipart/form-data (image file, text, k) or application/json (base64 image, text, k), not {ctype or 'no content type'!r}")
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await reject(413, f"the request body exceeds the limit of {limit}")
                return
            chunks.append(body)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if ctype.startswith("application/json"):
            try:
                parsed = json.loads(body)
            except ValueError as err:
                await reject(400, f"the body is not valid JSON ({err})")
                return
            if not isinstance(parsed, dict):
                await reject(400, "the JSON body must be an object with image and/or text (and k)")
                return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def serve_parser() -> ArgumentParser:
    p = command_parser("serve", "Serve an index over HTTP: POST /search, GET /images/{id}, and a search page at /.")
    p.add_argument("--ckpt", type=str, required=True, help="the checkpoint that built the index")
    p.add_argument("--index", type=str, required=True, help="an index folder written by `ctiir index`")
    p.add_argument("--port", type=int, default=8000, help="1024 to 65535")
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"], help="0.0.0.0 (or ::) listens on every interface")
    p.add_argument("--backend", default="exact", choices=["exact", "faiss"], help="exact (chunked matmul) or the index's FAISS index")
    p.add_argument("--max_k", type=int, default=100, help="the largest k a request may ask for")
    p.add_argument("--max_upload_mb", type=float, default=MAX_UPLOAD_MB, help="the largest request body")
    p.add_argument("--max_batch_size", type=int, default=8, help="concurrent queries searched together")
    add_device(p)
    return p


def serve_main(argv: list[str] | None = None) -> int:
    """``ctiir serve``: runs until stopped (0); 1 when the index or the checkpoint refuses, 2 on usage."""
    parser = serve_parser()

    def serve(args: Namespace) -> int:
        if not 1024 <= args.port <= 65535:
            parser.error(f"--port {args.port} is out of range (1024 to 65535)")
        for option in ("max_k", "max_batch_size"):
            if getattr(args, option) < 1:
                parser.error(f"--{option} must be >= 1, got {getattr(args, option)}")
        if args.max_upload_mb <= 0:
            parser.error(f"--max_upload_mb must be > 0, got {args.max_upload_mb}")
        require_file(parser, "--ckpt", args.ckpt)
        require_file(parser, "--index", args.index, folder=True)
        device = device_option(parser, args.device)
        return fail_on_data(parser.prog, lambda: run_server(args, device))

    return run_command(parser, argv, serve)


def run_server(args: Namespace, device: Any) -> int:
    import logging

    from ctiir.retrieval.model import file_sha256
    from ctiir.retrieval.storage import check_checkpoint, read_manifest

    ls = import_litserve()
    # Check the pair before starting workers: a mismatch is one clear line here, not a worker crash.
    manifest = read_manifest(args.index)
    ckpt_sha256 = file_sha256(args.ckpt)  # hashed once: the workers' Retriever is handed it
    check_checkpoint(manifest, folder=Path(args.index), ckpt_sha256=ckpt_sha256, ckpt=args.ckpt)
    max_bytes = int(args.max_upload_mb * 2**20)
    from ctiir.retrieval.litapi import SearchAPI

    api = SearchAPI(
        args.ckpt, args.index, backend=args.backend, max_k=args.max_k, max_batch_size=args.max_batch_size, device=str(device),
        ckpt_sha256=ckpt_sha256,
    )
    server = ls.LitServer(
        api,
        accelerator=device.type,
        devices=1,
        workers_per_device=1,
        timeout=60,
        max_payload_size=max_bytes,
        middlewares=[(PagesMiddleware, {"index": args.index, "max_k": args.max_k, "max_bytes": max_bytes})],
    )
    print(f"serving {manifest['count']} images from {args.index} at http://{args.host}:{args.port}/ (model on {device})", flush=True)
    # The HTTP server's access log follows `ctiir --verbose` (the root logger's level, set once by ctiir.cli).
    log_level = "info" if logging.getLogger().isEnabledFor(logging.INFO) else "warning"
    server.run(host=args.host, port=args.port, generate_client_file=False, num_api_servers=1, log_level=log_level)
    return EXIT_OK

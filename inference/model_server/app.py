"""HTTP API of the fastapi-pytorch runtime.

The model loads in the background once the server is up, so the process answers liveness at
once while readiness waits for the model, as the operator's model probe expects:

- ``GET /healthz`` and ``GET /v2/health/live``: the process answers (liveness).
- ``GET /v2/health/ready``: 200 once the model is loaded, 503 while it loads or after it failed,
  with ``state`` (``LOADING`` | ``READY`` | ``FAILED``) and ``reason``.
- ``GET /v2/models/{name}`` and ``/v2/models/{name}/ready``: KServe-v2-style metadata and
  per-model readiness; 404 for a name this server does not serve.
- ``POST /predict``: ``{"features": [[1.0], [2.0]]}`` -> ``{"predictions": [...]}``, always a list.
- ``GET /metrics``: Prometheus request counts, latency, queue time and whether the model is loaded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field, field_validator

from .loader import ModelLoadError, load_torchscript, wait_for_path

log = logging.getLogger("model_server")

LOADING = "LOADING"
READY = "READY"
FAILED = "FAILED"


@dataclass(frozen=True)
class Settings:
    """What the operator passes in the pod's environment (see src/reconcile/build/pod.rs)."""

    model_path: Path
    model_name: str
    model_version: str
    # How long to wait for MODEL_PATH to appear (a model written onto a shared volume after the
    # server starts); 0 fails at once when it is missing.
    wait_seconds: float

    @classmethod
    def from_env(cls) -> "Settings":
        raw_path = os.environ.get("MODEL_PATH")
        if not raw_path:
            raise ValueError("MODEL_PATH is not set: it must name a TorchScript file or a directory holding one")
        path = Path(raw_path)
        raw_wait = os.environ.get("MODEL_WAIT_SECONDS", "0")
        try:
            wait_seconds = float(raw_wait)
        except ValueError:
            raise ValueError(f"MODEL_WAIT_SECONDS must be a number of seconds, not {raw_wait!r}") from None
        return cls(
            model_path=path,
            model_name=os.environ.get("MODEL_NAME") or path.stem,
            model_version=os.environ.get("MODEL_VERSION") or "1",
            wait_seconds=wait_seconds,
        )


class PredictRequest(BaseModel):
    """Rows of input features; every row has the same length."""

    features: list[list[float]] = Field(min_length=1)

    @field_validator("features")
    @classmethod
    def rows_have_one_length(cls, rows: list[list[float]]) -> list[list[float]]:
        lengths = {len(row) for row in rows}
        if len(lengths) != 1:
            raise ValueError(f"every row must have the same length; got lengths {sorted(lengths)}")
        if 0 in lengths:
            raise ValueError("rows must not be empty")
        return rows


class PredictResponse(BaseModel):
    predictions: list


class Metrics:
    """One registry per app, so that tests can build several apps in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inference_requests_total",
            "Prediction requests by HTTP status code.",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inference_request_duration_seconds",
            "Time spent answering a prediction request, validation included.",
            registry=self.registry,
        )
        # The operator's `inference-queue` autoscaling divides this histogram's _sum by its _count.
        self.queue_time = Histogram(
            "inference_queue_duration_seconds",
            "Time a prediction waited, from its arrival to a worker thread starting on it.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.model_loaded = Gauge("model_loaded", "1 once the model is loaded and serving.", registry=self.registry)
        self.load_seconds = Gauge(
            "model_load_duration_seconds", "How long loading the model took.", registry=self.registry
        )


class ModelState:
    """The model and where loading it stands, shared by the loader thread and the handlers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = LOADING
        self.reason = "the model is loading"
        self.module: torch.jit.ScriptModule | None = None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def loaded(self, module: torch.jit.ScriptModule) -> None:
        with self._lock:
            self.module, self.state, self.reason = module, READY, "the model is loaded"

    def failed(self, reason: str) -> None:
        with self._lock:
            self.state, self.reason = FAILED, reason

    def waiting(self, reason: str) -> None:
        with self._lock:
            if self.state == LOADING:
                self.reason = reason


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    model = ModelState()

    stopping = threading.Event()

    def load() -> None:
        started = time.monotonic()
        try:
            wait_for_path(settings.model_path, settings.wait_seconds, on_wait=model.waiting, stop=stopping)
            module = load_torchscript(settings.model_path, model.device)
        except ModelLoadError as err:
            log.error("model %s failed to load: %s", settings.model_name, err)
            model.failed(str(err))
            return
        except Exception as err:  # noqa: BLE001 - any loader error must end in FAILED, not a dead thread
            # An error the loader does not anticipate (a PermissionError on MODEL_PATH, an
            # out-of-memory from torch) would otherwise end the thread and leave the state
            # LOADING forever: readiness, and the operator's ModelReady, would wait for nothing.
            log.exception("model %s failed to load", settings.model_name)
            model.failed(f"{type(err).__name__}: {err}")
            return
        model.loaded(module)
        metrics.load_seconds.set(time.monotonic() - started)
        metrics.model_loaded.set(1)
        log.info("model %s loaded from %s on %s", settings.model_name, settings.model_path, model.device)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        # Loading runs beside the server so that liveness answers while a large model loads. A
        # daemon thread, told to stop waiting, never holds up a shutdown.
        threading.Thread(target=load, name="model-loader", daemon=True).start()
        yield
        stopping.set()

    app = FastAPI(title="fastapi-pytorch model server", lifespan=lifespan)

    def readiness_body() -> dict:
        return {"ready": model.state == READY, "model": settings.model_name, "state": model.state, "reason": model.reason}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> JSONResponse:
        body = readiness_body()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    def served_model(name: str) -> None:
        if name != settings.model_name:
            raise HTTPException(404, f"model {name!r} is not served here; this server serves {settings.model_name!r}")

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str) -> JSONResponse:
        served_model(name)
        body = readiness_body()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/v2/models/{name}")
    def model_metadata(name: str) -> JSONResponse:
        served_model(name)
        if model.state != READY:
            return JSONResponse({"error": model.reason, "state": model.state}, status_code=503)
        # TorchScript does not record tensor shapes: both are a batch of rows of any width.
        return JSONResponse(
            {
                "name": settings.model_name,
                "versions": [settings.model_version],
                "platform": "pytorch_torchscript",
                "state": READY,
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, -1]}],
                "outputs": [{"name": "predictions", "datatype": "FP32", "shape": [-1, -1]}],
            }
        )

    @app.post("/predict")
    def predict(request: PredictRequest, http: Request) -> PredictResponse:
        # A sync handler runs on the server's thread pool: the wait since the middleware saw
        # the request is time spent queued for a thread (body parsing, microseconds, included).
        arrived = getattr(http.state, "arrived", None)
        if arrived is not None:
            metrics.queue_time.observe(time.perf_counter() - arrived)
        module = model.module
        if module is None:
            raise HTTPException(503, f"the model is not ready: {model.reason}")
        inputs = torch.tensor(request.features, dtype=torch.float32, device=model.device)
        try:
            with torch.no_grad():
                output = module(inputs)
        except RuntimeError as err:
            # Usually a feature count the model does not take; the client can fix it.
            raise HTTPException(
                422,
                [
                    {
                        "loc": ["body", "features"],
                        "msg": f"the model rejected features of shape {list(inputs.shape)}: {first_line(err)}",
                        "type": "model_input",
                    }
                ],
            ) from None
        if not isinstance(output, torch.Tensor):
            raise HTTPException(500, f"the model returned {type(output).__name__}, not a tensor")
        predictions = output.detach().cpu().tolist()
        return PredictResponse(predictions=predictions if isinstance(predictions, list) else [predictions])

    @app.middleware("http")
    async def count_predictions(request: Request, call_next):
        if request.url.path != "/predict":
            return await call_next(request)
        started = time.perf_counter()
        request.state.arrived = started
        response = await call_next(request)
        metrics.latency.observe(time.perf_counter() - started)
        metrics.requests.labels(code=str(response.status_code)).inc()
        return response

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def create_app_from_env() -> FastAPI:
    """The uvicorn factory: ``uvicorn --factory model_server.app:create_app_from_env``."""
    return create_app(Settings.from_env())

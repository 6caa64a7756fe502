"""The fastapi-pytorch runtime against real TorchScript models written by the tests."""

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import Affine, Total, create_app, save_scripted, settings_for, wait_for_state
from model_server.app import Settings


def test_predicts_with_the_loaded_model(affine_model: Path) -> None:
    with TestClient(create_app(settings_for(affine_model))) as client:
        wait_for_state(client, "READY")
        response = client.post("/predict", json={"features": [[1.0], [2.0]]})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": [[3.0], [5.0]]}


def test_a_scalar_output_is_still_a_list(tmp_path: Path) -> None:
    path = save_scripted(Total(), tmp_path / "total.pt")
    with TestClient(create_app(settings_for(path))) as client:
        wait_for_state(client, "READY")
        assert client.post("/predict", json={"features": [[1.0, 2.0], [3.0, 4.0]]}).json() == {"predictions": [10.0]}


def test_readiness_waits_for_the_model_to_appear(tmp_path: Path) -> None:
    path = tmp_path / "late.pt"
    with TestClient(create_app(settings_for(path, wait_seconds=30))) as client:
        assert client.get("/healthz").status_code == 200
        loading = client.get("/v2/health/ready")
        assert loading.status_code == 503
        assert loading.json()["state"] == "LOADING", loading.json()
        assert client.post("/predict", json={"features": [[1.0]]}).status_code == 503
        assert client.get("/v2/models/affine").status_code == 503

        # Written beside it and renamed, as the fetcher does, so it is never seen half-written.
        save_scripted(Affine(), tmp_path / "late.pt.partial").rename(path)
        ready = wait_for_state(client, "READY")
        assert ready["ready"] is True
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/affine/ready").status_code == 200


def test_a_broken_model_fails_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"these bytes are not a TorchScript archive")
    with TestClient(create_app(settings_for(path))) as client:
        failed = wait_for_state(client, "FAILED")
        assert str(path) in failed["reason"], failed
        assert "not a TorchScript model" in failed["reason"], failed
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/healthz").status_code == 200


def test_a_missing_model_fails_when_not_waiting(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path / "absent.pt"))) as client:
        failed = wait_for_state(client, "FAILED")
        assert failed["reason"] == f"MODEL_PATH {tmp_path / 'absent.pt'} does not exist"


def test_a_directory_serves_model_pt_or_its_only_model(tmp_path: Path) -> None:
    save_scripted(Affine(), tmp_path / "weights.pth")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        wait_for_state(client, "READY")
        assert client.post("/predict", json={"features": [[0.0]]}).json() == {"predictions": [[1.0]]}

    save_scripted(Total(), tmp_path / "other.pt")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        failed = wait_for_state(client, "FAILED")
        assert "several model files (other.pt, weights.pth)" in failed["reason"], failed

    save_scripted(Total(), tmp_path / "model.pt")
    with TestClient(create_app(settings_for(tmp_path))) as client:
        wait_for_state(client, "READY")
        assert client.post("/predict", json={"features": [[2.0, 3.0]]}).json() == {"predictions": [5.0]}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"features": []},
        {"features": [[1.0], [2.0, 3.0]]},
        {"features": [["one"]]},
        {"features": [1.0, 2.0]},
        {"features": [[1.0, 2.0]]},  # two features for a one-feature model: the model refuses
    ],
)
def test_bad_input_is_422_naming_features(affine_model: Path, body: dict) -> None:
    with TestClient(create_app(settings_for(affine_model))) as client:
        wait_for_state(client, "READY")
        response = client.post("/predict", json=body)
        assert response.status_code == 422, response.text
        locations = [error["loc"] for error in response.json()["detail"]]
        assert all(loc[:2] == ["body", "features"] for loc in locations), locations


def test_metadata_describes_the_served_model(affine_model: Path) -> None:
    with TestClient(create_app(settings_for(affine_model))) as client:
        wait_for_state(client, "READY")
        metadata = client.get("/v2/models/affine").json()
        assert metadata["name"] == "affine"
        assert metadata["versions"] == ["v1"]
        assert metadata["platform"] == "pytorch_torchscript"
        assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, -1]}]
        other = client.get("/v2/models/resnet")
        assert other.status_code == 404
        assert "serves 'affine'" in other.json()["detail"]


def test_metrics_count_requests_latency_and_the_loaded_model(affine_model: Path) -> None:
    with TestClient(create_app(settings_for(affine_model))) as client:
        wait_for_state(client, "READY")
        client.post("/predict", json={"features": [[1.0]]})
        client.post("/predict", json={"features": [[1.0]]})
        client.post("/predict", json={"features": "none"})
        text = client.get("/metrics").text
        assert 'inference_requests_total{code="200"} 2.0' in text, text
        assert 'inference_requests_total{code="422"} 1.0' in text, text
        assert "inference_request_duration_seconds_count 3.0" in text, text
        # Only the two predictions that reached a worker thread waited in the queue.
        assert "inference_queue_duration_seconds_count 2.0" in text, text
        queued = next(line for line in text.splitlines() if line.startswith("inference_queue_duration_seconds_sum"))
        assert float(queued.split()[1]) > 0, text
        assert "model_loaded 1.0" in text, text


def test_settings_name_the_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_PATH", raising=False)
    with pytest.raises(ValueError, match="MODEL_PATH is not set"):
        Settings.from_env()
    monkeypatch.setenv("MODEL_PATH", "/models/model.pt")
    monkeypatch.setenv("MODEL_WAIT_SECONDS", "soon")
    with pytest.raises(ValueError, match="MODEL_WAIT_SECONDS must be a number"):
        Settings.from_env()
    monkeypatch.setenv("MODEL_WAIT_SECONDS", "0")
    monkeypatch.delenv("MODEL_NAME", raising=False)
    monkeypatch.delenv("MODEL_VERSION", raising=False)
    settings = Settings.from_env()
    assert (settings.model_name, settings.model_version) == ("model", "1")


def test_shutdown_does_not_wait_for_a_model_that_never_came(tmp_path: Path) -> None:
    started = time.monotonic()
    with TestClient(create_app(settings_for(tmp_path / "never.pt", wait_seconds=60))) as client:
        assert client.get("/v2/health/ready").json()["state"] == "LOADING"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "error, reason",
    [
        # MODEL_PATH the server's user may not read (the tests run as root, who reads anything,
        # so the loader is made to raise what it would).
        (PermissionError(13, "Permission denied", "/models/model.pt"), "PermissionError: [Errno 13] Permission denied: '/models/model.pt'"),
        (RuntimeError("CUDA error: out of memory"), "RuntimeError: CUDA error: out of memory"),
    ],
)
def test_any_loader_exception_fails_the_model_instead_of_loading_forever(
    affine_model: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, reason: str
) -> None:
    import model_server.app as app_module

    def explode(path: Path, device: object) -> None:
        raise error

    monkeypatch.setattr(app_module, "load_torchscript", explode)
    with TestClient(create_app(settings_for(affine_model))) as client:
        body = wait_for_state(client, "FAILED")
        assert body["reason"] == reason, body
        assert client.get("/v2/health/ready").status_code == 503

"""``python -m model_server``: the image's entrypoint, uvicorn on HOST:PORT (0.0.0.0:8000)."""

import os

import uvicorn


def main() -> None:
    uvicorn.run(
        "model_server.app:create_app_from_env",
        factory=True,
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8000")),
        log_level=os.environ.get("LOG_LEVEL", "info"),
    )


if __name__ == "__main__":
    main()

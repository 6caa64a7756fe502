"""The fastapi-pytorch runtime: serves one TorchScript model over HTTP."""

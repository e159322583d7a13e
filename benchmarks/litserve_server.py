"""LitServe serving the same TorchScript model with the same OIP-shaped JSON body, for a
side-by-side comparison (run in its own venv: benchmarks/.venv-litserve)."""

from __future__ import annotations

import argparse

import litserve as ls
import torch


class TorchScriptAPI(ls.LitAPI):
    def __init__(self, path: str, threads: int) -> None:
        super().__init__()
        self.path = path
        self.threads = threads

    def setup(self, device: str) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = torch.jit.load(self.path, map_location=device).eval()
        self.device = device

    def decode_request(self, request: dict) -> torch.Tensor:
        tensor = request["inputs"][0]
        return torch.tensor(tensor["data"], dtype=torch.float32).reshape(tensor["shape"])

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x.to(self.device)).cpu()

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output.split(1))

    def encode_response(self, output: torch.Tensor) -> dict:
        return {
            "outputs": [
                {
                    "name": "y",
                    "datatype": "FP32",
                    "shape": list(output.shape),
                    "data": output.reshape(-1).tolist(),
                }
            ]
        }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api-servers", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-timeout", type=float, default=0.002)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fast-queue", action="store_true")
    a = p.parse_args()
    server = ls.LitServer(
        TorchScriptAPI(a.model, a.threads),
        accelerator="cpu",
        workers_per_device=a.workers,
        max_batch_size=a.max_batch_size,
        batch_timeout=a.batch_timeout,
        fast_queue=a.fast_queue,
        timeout=60,
    )
    server.run(
        host="127.0.0.1",
        port=a.port,
        num_api_servers=a.api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
